"""HTTP routes of the admin client: thin translations onto its service layer."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
