"""The names the tests' worlds are built from: one trust domain, this server, its peers."""

from __future__ import annotations

#: The trust domain of most tests (IAM policy templates are written for it too).
TD = "example.org"
#: Another trust domain, whose keys must never be touched.
OTHER_TD = "other.example.org"
#: This server (the daemon's own).
SERVER = "0b6a1bd4-2a5f-4a8b-9a4e-1f0e7c6d5a43"
#: A peer server of the same trust domain (usually dead: its keys are stale).
PEER = "d3f5c6a1-7b8e-4c2d-9f0a-123456789abc"
#: A peer that is alive.
LIVE_PEER = "11111111-2222-4333-8444-555555555555"
