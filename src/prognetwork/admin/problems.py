"""The problems the admin client answers with, besides the kit's shared ones (kit.problems)."""

from prognetwork.kit.problems import ProblemType

__all__ = ["ProblemType"]
