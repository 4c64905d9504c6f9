"""simpleNN's .config files, parsed as data: the network of simpleNN's shipped configs is the
shipped example, and every bad line is named."""

from __future__ import annotations

import pytest
import yaml

from costmodel.errors import ArchError
from costmodel.model.arch import parse_arch
from costmodel.model.simplenn import parse_config

from tests.conftest import ROOT

#: the network of simpleNN's MATLAB/config/mnist-demo-layer3.config and mnist-demo-layer4.config
#: (both describe the same 4-layer network), in its syntax
DEMO = """% simpleNN's demo network
L = 4;
LC = 3;
LF = 1;
wd_input = [28];
ht_input = [28];
ch_input = [1,32,64,64];
wd_pad_added = [2,1,1];
wd_filter = [5,3,3];
strides = [1,1,1];
wd_subimage_pool = [2,2,2];
full_neurons = [10];
"""


def test_simplenns_demo_config_is_the_shipped_example():
    example = yaml.safe_load((ROOT / "examples" / "mnist-demo-layer4.yaml").read_text())
    arch = parse_arch(parse_config(DEMO, "mnist-demo-layer4.config", "mnist-demo-layer4"))
    assert arch == parse_arch(example)


def test_matlab_vectors_with_spaces_comments_and_no_semicolons():
    text = DEMO.replace("[1,32,64,64]", "[1 32  64 64]").replace("L = 4;", "L = 4   % layers") \
        .replace("LC = 3;", "LC=3")
    assert parse_config(text) == parse_config(DEMO)


def test_an_mlp_config_needs_no_conv_keys():
    data = parse_config("L = 2; \nLC = 0;\nLF = 2;\nwd_input = 8;\nht_input = 8;\nch_input = [1];\n"
                        "full_neurons = [64, 10];\n")
    assert [layer["units"] for layer in data["layers"]] == [64, 10]
    parse_arch(data)


@pytest.mark.parametrize("change, message", [
    (("wd_filter = [5,3,3];", "wd_filter = [5,3,3]; x = system('rm -rf /')"), "line 9: one NAME = VALUE per line (\"wd_filter = [5,3,3]; x = system"),
    (("strides = [1,1,1];", "strides = [1,1,1];\nstrides = [2,2,2];"), "line 11: strides is set again (first on line 10)"),
    (("wd_filter", "wd_filtr"), "line 9: unknown key 'wd_filtr' (did you mean 'wd_filter'?)"),
    (("ch_input = [1,32,64,64];", "ch_input = [1,32,64];"), "line 7: ch_input has 3 values, LC + 1 = 4"),
    (("[5,3,3]", "[5,3.5,3]"), "line 9: wd_filter: '3.5' is not an integer"),
    (("[5,3,3]", "[5,3,3"), "line 9: wd_filter: '[5,3,3' opens '['"),
    (("L = 4;", "L = 5;"), "line 2: L = 5 must be LC + LF = 3 + 1"),
    (("LF = 1;", "LF = [1, 2];"), "line 4: LF must be one integer, not 2"),
    (("full_neurons = [10];\n", ""), "missing key 'full_neurons'"),
    (("[5,3,3]", "[5,3,99999999999999999999]"), "line 9: wd_filter: '99999999999999999999' is not an integer"),
])
def test_a_bad_config_is_one_error_naming_the_line(change, message):
    with pytest.raises(ArchError) as info:
        parse_config(DEMO.replace(*change), "net.config")
    assert str(info.value).startswith("net.config: ") and message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_config_that_breaks_an_architecture_rule_is_refused_by_the_schema():
    with pytest.raises(ArchError, match=r"layers\[0\] \(conv\): kernel 40 does not fit the padded input 32x32"):
        parse_arch(parse_config(DEMO.replace("[5,3,3]", "[40,3,3]")), "net.config")
