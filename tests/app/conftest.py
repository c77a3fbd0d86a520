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
