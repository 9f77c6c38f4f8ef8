"""Models the engine trains: the native Llama-family decoder and its HF-layout checkpoints."""

from kdengine.models.decoder import Decoder, DecoderConfig
from kdengine.models.hf_layout import (
    UnsupportedArchitecture,
    config_from_hf,
    config_to_hf,
    load_decoder,
    read_hf_config,
    save_decoder,
    stored_dtype,
)

__all__ = ["Decoder", "DecoderConfig", "UnsupportedArchitecture", "config_from_hf",
           "config_to_hf", "load_decoder", "read_hf_config", "save_decoder", "stored_dtype"]
