"""`python -m services.classifier`: images → predictions."""

from __future__ import annotations

from services.common import runtime
from services.common.avro import IMAGES
from services.common.stream import run_stream

from .classify import Classifier
from .hashtags import load_rules
from .settings import ClassifierSettings
from .triton import TritonModel


async def _service(rt: runtime.Runtime, settings: ClassifierSettings) -> None:
    rules = load_rules(settings.hashtags_file)
    model = TritonModel(settings.triton_url, settings.model_name, settings.model_version, settings.request_timeout_s)
    rt.health.add_check(lambda: None if model.signature else f"model {settings.model_name} not ready on Triton")
    try:
        signature = await model.wait_until_ready(rt.stop)
        if signature is None:
            return
        classifier = Classifier(settings, model, signature, rules.for_labels(signature.labels))
        try:
            await run_stream(rt, settings, IMAGES, classifier.handle)
        finally:
            await classifier.close()
    finally:
        await model.close()


def main() -> None:
    runtime.run("classifier", ClassifierSettings(), _service)


if __name__ == "__main__":
    main()
