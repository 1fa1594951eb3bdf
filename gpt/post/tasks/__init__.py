"""The task suite: small tasks with exactly checkable answers (see suite.py), pairs on them, scoring."""
