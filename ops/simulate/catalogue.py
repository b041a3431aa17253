"""What the simulated customers buy and where: categories, SKUs and their prices, stores, agents,
promo codes, and the hours of day each channel is busy."""

from __future__ import annotations

import random
from functools import cache

CATEGORIES: dict[str, tuple[int, int]] = {
    "groceries": (99, 1_999),
    "household": (199, 2_999),
    "beauty": (399, 5_999),
    "books": (599, 3_999),
    "toys": (499, 7_999),
    "apparel": (1_499, 12_999),
    "shoes": (3_999, 17_999),
    "sports": (999, 19_999),
    "home": (999, 24_999),
    "electronics": (1_999, 89_999),
}
"""Product categories and the range of their unit prices, minor units."""

AFFINITY: dict[str, tuple[str, str]] = {
    "shoes": ("apparel", "sports"),
    "apparel": ("shoes", "beauty"),
    "beauty": ("apparel", "groceries"),
    "sports": ("shoes", "electronics"),
    "electronics": ("home", "sports"),
    "home": ("household", "electronics"),
    "household": ("groceries", "home"),
    "groceries": ("household", "beauty"),
    "books": ("toys", "home"),
    "toys": ("books", "sports"),
}
"""Co-purchase structure: each category's two partners. A customer's three favourite categories
are one category and, each with :data:`AFFINITY_SHARE`, its partners (else any other category),
so customers who buy shoes tend to buy apparel and sports too."""
AFFINITY_SHARE = 0.8

SKUS_PER_CATEGORY = 60
STORES = tuple(f"STORE-{n:03d}" for n in range(1, 13))
ONLINE_LOCATIONS = {"web": "web-shop", "app": "mobile-app"}
AGENTS = tuple(f"AG{n:03d}" for n in range(1, 41))
PROMOS: tuple[tuple[str, int], ...] = (
    ("SPRING15", 15), ("VIP10", 10), ("SAVE20", 20), ("FLASH25", 25), ("FREESHIP", 0),
)
WELCOME_PROMO = ("WELCOME10", 10)
EVERYDAY = frozenset({"groceries", "household"})
"""Categories bought several at a time."""

# Relative activity per hour of day: shops open 08-21, the contact centre 08-20, online all day.
STORE_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 4, 6, 8, 10, 10, 9, 8, 8, 9, 10, 10, 8, 5, 0, 0, 0)
ONLINE_HOURS = (6, 3, 2, 1, 1, 2, 5, 9, 12, 13, 14, 15, 17, 16, 14, 14, 15, 17, 19, 20, 20, 19, 15, 10)
CONTACT_HOURS = (0, 0, 0, 0, 0, 0, 0, 0, 6, 10, 10, 9, 7, 8, 9, 9, 8, 7, 5, 3, 0, 0, 0, 0)


@cache
def sku_price(sku: str) -> int:
    """The fixed unit price of a SKU (minor units), so a product costs the same in every order."""
    category = sku.rsplit("-", 1)[0].lower()
    lo, hi = CATEGORIES[category]
    price = random.Random(f"sku|{sku}").randint(lo // 100 + 1, hi // 100 + 1) * 100 - 1  # x.99
    return max(lo, min(hi, price))
