"""Fake video providers for tests and ``bench/video_api.py``: real HTTP servers on 127.0.0.1 that
speak each provider's documented protocol (see each module), with injected faults.

``FAKES`` maps the adapter name to the fake class; ``settings_for(fake)`` gives the environment /
secrets.yaml entries that point the adapter at the fake with its key.
"""
from __future__ import annotations

from tests.fake_providers.core import FakeProvider, Outcome, make_mp4
from tests.fake_providers.fal import FakeFal
from tests.fake_providers.gemini import FakeGemini
from tests.fake_providers.kling import FakeKling
from tests.fake_providers.luma import FakeLuma
from tests.fake_providers.openai import FakeOpenAI
from tests.fake_providers.runway import FakeRunway

FAKES = {"runway": FakeRunway, "luma": FakeLuma, "veo": FakeGemini, "kling": FakeKling, "fal": FakeFal,
         "openai": FakeOpenAI}


def settings_for(fake: FakeProvider) -> dict[str, str]:
    """Key and base-URL settings (environment names) that point an adapter at ``fake``."""
    if isinstance(fake, FakeRunway):
        return {"RUNWAYML_API_SECRET": fake.key, "RUNWAYML_BASE_URL": fake.base_url}
    if isinstance(fake, FakeLuma):
        return {"LUMAAI_API_KEY": fake.key, "LUMAAI_BASE_URL": fake.base_url}
    if isinstance(fake, FakeGemini):
        return {"GEMINI_API_KEY": fake.key, "GEMINI_BASE_URL": fake.base_url}
    if isinstance(fake, FakeKling):
        return {"KLING_ACCESS_KEY": fake.access_key, "KLING_SECRET_KEY": fake.secret_key,
                "KLING_BASE_URL": fake.base_url}
    if isinstance(fake, FakeFal):
        return {"FAL_KEY": fake.key, "FAL_BASE_URL": fake.base_url}
    if isinstance(fake, FakeOpenAI):
        return {"OPENAI_API_KEY": fake.key, "OPENAI_BASE_URL": fake.base_url}
    raise TypeError(type(fake).__name__)


__all__ = ["FAKES", "FakeFal", "FakeGemini", "FakeKling", "FakeLuma", "FakeOpenAI", "FakeProvider", "FakeRunway",
           "Outcome", "make_mp4", "settings_for"]
