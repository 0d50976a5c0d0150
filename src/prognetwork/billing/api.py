"""HTTP routes of the billing service: thin translations onto its service layer."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
