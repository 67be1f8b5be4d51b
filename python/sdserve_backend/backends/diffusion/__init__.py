"""The built-in "diffusion" backend: Stable Diffusion text-to-image behind Triton's Python-model API."""
