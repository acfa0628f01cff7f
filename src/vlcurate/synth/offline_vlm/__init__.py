"""`vlcurate vlm serve`: an OpenAI-compatible chat-completions server over the bundled tiny-synth model.

A real model behind the real protocol, so every VLM feature (recaption, CoT rewriting, the
Data Metabolism filters, the game) runs offline end to end and is tested over real HTTP.
"""

from vlcurate.synth.offline_vlm.settings import VLMServerSettings

__all__ = ["VLMServerSettings"]
