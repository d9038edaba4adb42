"""The otaship GitHub Action's code, also the `otaship-deploy` CLI for any CI."""

from __future__ import annotations
