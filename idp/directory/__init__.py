"""The directory: users, groups and departments."""
