"""loyalty-stream: customer interactions in, explainable loyalty signals out."""
