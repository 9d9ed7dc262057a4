"""Reward functions (ORMs / PRMs), model rewards and remote HTTP rewards."""
