"""Hugging Face Hub interop: export to a Hub-ready folder, push it, load it back.

`zoo.load("hf-hub:org/name[@revision]")` and `zoo.load("local-dir:/path")` dispatch here.
"""

from ._export import (
    build_card as build_card,
    build_config as build_config,
    push_to_hub as push_to_hub,
    save_pretrained as save_pretrained,
    write_weights_file as write_weights_file,
)
from ._sources import (
    fetch as fetch,
    is_source as is_source,
    load_source as load_source,
    parse_config as parse_config,
    read_config as read_config,
    read_export as read_export,
    source_state_dict as source_state_dict,
)
