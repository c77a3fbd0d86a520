"""One in-process app per test session, served on loopback for gradio_client and the browser."""
import os

import pytest

os.environ["SAFETY_DEMO_FAKE_MODEL"] = "1"  # the fake model appears in the picker for fast tests


@pytest.fixture(scope="session")
def app_url():
    import app

    _, url, _ = app.demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, **app.LAUNCH_OPTIONS)
    yield url
    app.demo.close()


@pytest.fixture(scope="session")
def client(app_url):
    from gradio_client import Client

    return Client(app_url, verbose=False)


@pytest.fixture(scope="session")
def knob_defaults():
    from safety_demo.methods import knob_values

    return knob_values()


@pytest.fixture(scope="session")
def fake_probe(app_url):
    """A tiny probe for the fake model, so the fast app tests need no calibration pass."""
    import numpy as np

    from safety_demo.models import load_adapter
    from safety_demo.probe import DecodingProbe

    fake = load_adapter("fake")
    D = fake.hidden_size
    probe = DecodingProbe(fake.model_id, "test", np.zeros(D, np.float32), np.eye(4, D, dtype=np.float32),
                          np.array([1, 0, 0, 0], np.float32), 0.0, np.eye(1, D, 1, dtype=np.float32)[0], np.zeros(D, np.float32))
    from safety_demo.ui import session

    session._PROBES[(fake.model_id, 4)] = probe
    session._PROBES[(fake.model_id, "auto")] = probe
    return probe
