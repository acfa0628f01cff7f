"""`vlcurate vlm serve`: the tiny-synth model behind an OpenAI-compatible chat-completions API."""

from __future__ import annotations

from typing import Annotated

import typer

from vlcurate.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Vision-language model tools: a local OpenAI-compatible server.", no_args_is_help=True
    )

    @group.command("serve")
    def serve_command(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8300,
        model: Annotated[str, typer.Option(help="CLIP registry name of the scoring model.")] = "tiny-synth",
        served_model_name: Annotated[
            str | None, typer.Option(help="Another model name the server answers to (besides tiny-synth).")
        ] = None,
        api_key: Annotated[
            str | None, typer.Option(envvar="VLCURATE_VLM_API_KEY", help="Require this Bearer token.")
        ] = None,
        device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
        threads: Annotated[int, typer.Option(help="Torch CPU threads (1 is fastest here).")] = 1,
        wrong_rate: Annotated[
            float, typer.Option(help="Share of answers made wrong on purpose (game).")
        ] = 0.0,
        wrong_kinds: Annotated[
            str, typer.Option(help="Question kinds the wrong answers hit: count,exists,colour,shape.")
        ] = "count,exists,colour,shape",
        json_schema: Annotated[
            str, typer.Option(help="Structured output: supported, ignored (free text) or rejected (400).")
        ] = "supported",
        latency_ms: Annotated[
            float, typer.Option(help="Emulated generation latency per request (ms).")
        ] = 0.0,
        max_batch: Annotated[int, typer.Option(help="Most images encoded together across requests.")] = 32,
        faults: Annotated[
            str,
            typer.Option(
                help='Fault probabilities, e.g. "429=0.1,500=0.05,timeout=0.02,malformed=0.05,empty=0.02".'
            ),
        ] = "",
        fault_seed: Annotated[int, typer.Option(help="Seed of the fault draws.")] = 0,
        hang_s: Annotated[
            float, typer.Option(help="How long a `timeout` fault hangs before answering (s).")
        ] = 30.0,
        max_images: Annotated[int, typer.Option(help="Most images per request.")] = 4,
        max_image_bytes: Annotated[int, typer.Option(help="Largest accepted image (bytes).")] = 10
        * 1024
        * 1024,
        weakness: Annotated[
            str,
            typer.Option(
                help="Planted weaknesses, comma separated: blind-colour=COLOUR, confuse-shapes=A:B, "
                "refuse=KIND, garble=KIND (KIND: count, exists, colour, shape)."
            ),
        ] = "",
        memory: Annotated[
            str | None,
            typer.Option(
                help="Training samples (instruction file or folder) the server remembers; a weakness is "
                "cured on items whose attribute it covers (also POST /admin/memory)."
            ),
        ] = None,
        memory_min: Annotated[
            int, typer.Option(min=1, help="Memory samples about an attribute that cure its weakness.")
        ] = 20,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Serve tiny-synth as an OpenAI-compatible VLM at http://HOST:PORT/v1 (offline, CPU)."""
        import uvicorn

        from vlcurate.models.scorer import WeightsNotFoundError
        from vlcurate.synth.offline_vlm.app import create_app
        from vlcurate.synth.offline_vlm.settings import VLMServerSettings

        with user_errors(WeightsNotFoundError, OSError):
            settings = VLMServerSettings(
                host=host,
                port=port,
                model=model,
                served_model_name=served_model_name,
                api_key=api_key,
                device=device,
                threads=threads,
                wrong_rate=wrong_rate,
                wrong_kinds=wrong_kinds,
                json_schema=json_schema,
                latency_ms=latency_ms,
                max_batch=max_batch,
                faults=faults,
                fault_seed=fault_seed,
                hang_s=hang_s,
                max_images=max_images,
                max_image_bytes=max_image_bytes,
                weakness=weakness,
                memory=memory,
                memory_min=memory_min,
            )
            app_ = create_app(settings)
        names = ", ".join(settings.model_names)
        typer.echo(f"vlcurate vlm serve: http://{host}:{port}/v1 (models: {names})")
        uvicorn.run(
            app_, host=host, port=port, log_level=log_level, access_log=False, timeout_graceful_shutdown=3
        )

    app.add_typer(group, name="vlm")
