"""Drills: attack-defence exercises, their test cases, and how well the SOC saw them."""
