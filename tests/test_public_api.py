"""The public API: `from edgespec import ...` gives every name in `__all__`, and importing the
package alone stays as light as the round core (names load on first use)."""

from __future__ import annotations

import subprocess
import sys

import edgespec


def test_every_public_name_resolves_to_what_its_module_defines() -> None:
    for name in edgespec.__all__:
        value = getattr(edgespec, name)
        assert value is not None, name
        if name != "__version__":
            module = sys.modules[edgespec._EXPORTS[name]]
            assert getattr(module, name) is value, name


def test_dir_lists_the_public_names() -> None:
    assert set(edgespec.__all__) <= set(dir(edgespec))


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        edgespec.NoSuchThing  # noqa: B018
    except AttributeError as error:
        assert "NoSuchThing" in str(error)
    else:
        raise AssertionError("edgespec.NoSuchThing resolved")


def test_importing_the_package_loads_no_heavy_library() -> None:
    code = (
        "import sys, edgespec\n"
        "from edgespec import Mode, GenerationConfig, SamplingParams\n"
        "heavy = {'torch', 'transformers', 'numpy', 'grpc'} & set(sys.modules)\n"
        "print(','.join(sorted(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"import edgespec (and its pure-Python names) loaded {out}"


def test_the_quickstart_names_are_public() -> None:
    from edgespec import EdgeClient, GenerationConfig, LocalEngine, Mode, load_draft, load_model, render_prompt

    assert Mode("sd-ee-pipelined") is Mode.SD_EE_PIPELINED
    assert GenerationConfig(max_new_tokens=8, gamma=4).gamma == 4
    assert callable(load_model) and callable(load_draft) and callable(render_prompt)
    assert EdgeClient.__module__ == "edgespec.client.edge_client"
    assert LocalEngine.__module__ == "edgespec.drivers.local_engine"
