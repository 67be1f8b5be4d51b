"""Config values the diffusion backend refuses, with the start of the load error each gives:
(parameter, value, message)."""

BAD_CONFIG_VALUES = [
    ("engine_fp8", "dynamic", "config parameter 'engine_fp8' must be one of 'off', 'static', got 'dynamic'"),
    ("lora_slots", "1", "config parameter 'lora_slots' must be 0 (off) or an integer from 2 to 256, got '1'"),
    ("lora_dir", "no_such_folder", "config parameter 'lora_dir' names 'no_such_folder', which is not a folder"),
]
