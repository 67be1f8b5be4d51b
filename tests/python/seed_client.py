"""The seed workload: client processes each sending text prompts to a text-to-image model over
KServe v2 HTTP with Triton's client, saving the images, and reporting throughput and latency.

    python tests/python/seed_client.py --model tiny_sd --clients 2 --requests 3 --static-batch-size 2 --save-image
"""
from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import numpy as np
import tritonclient.http as httpclient
from PIL import Image


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="localhost:8000", help="the server's HTTP host:port")
    parser.add_argument("--model", default="stable_diffusion_1_5", help="model to send prompts to")
    parser.add_argument("--prompt", default="butterfly in new york, 4k, realistic", help="text prompt of every request")
    parser.add_argument("--clients", type=int, default=1, help="client processes sending requests at once")
    parser.add_argument("--requests", type=int, default=1, help="requests each client sends, one after another")
    parser.add_argument("--static-batch-size", type=int, default=1, help="prompts in each request")
    parser.add_argument("--save-image", action="store_true", help="save every generated image as a JPEG")
    parser.add_argument("--output-dir", type=Path, default=Path("."), help="where --save-image writes")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (request parameter; default: the model's)")
    args = parser.parse_args(argv)
    for name in ("clients", "requests", "static_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    return args


def run_client(index: int, args: argparse.Namespace, results: multiprocessing.Queue) -> None:
    """Puts (index, seconds per request) on `results`, or (index, the error) when the client fails."""
    try:
        results.put((index, send_requests(index, args)))
    except Exception as err:  # reported by the parent, which would otherwise wait for this result forever
        results.put((index, f"{type(err).__name__}: {err}"))


def send_requests(index: int, args: argparse.Namespace) -> list[float]:
    """One client: `args.requests` requests in a row, each one's latency in seconds."""
    client = httpclient.InferenceServerClient(url=args.url)
    prompts = np.array([[args.prompt]] * args.static_batch_size, dtype=object)
    prompt = httpclient.InferInput("prompt", list(prompts.shape), "BYTES")
    prompt.set_data_from_numpy(prompts)
    output = httpclient.InferRequestedOutput("generated_image")
    parameters = {"steps": args.steps} if args.steps is not None else None
    latencies = []
    for request in range(args.requests):
        start = time.perf_counter()
        result = client.infer(args.model, [prompt], outputs=[output], parameters=parameters)
        images = result.as_numpy("generated_image")
        latencies.append(time.perf_counter() - start)
        if args.save_image:
            for position, image in enumerate(images):
                path = args.output_dir / f"client_{index}_request_{request}_image_{position}.jpg"
                Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path, format="JPEG")
    client.close()
    return latencies


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.save_image:
        args.output_dir.mkdir(parents=True, exist_ok=True)
    results: multiprocessing.Queue = multiprocessing.Queue()
    processes = [multiprocessing.Process(target=run_client, args=(i, args, results)) for i in range(args.clients)]
    start = time.perf_counter()
    for process in processes:
        process.start()
    # Read before joining: a child cannot exit while its result still sits in the queue's pipe.
    latencies = dict(results.get() for _ in processes)
    for process in processes:
        process.join()
    total = time.perf_counter() - start
    failures = [f"client {index}: {outcome}" for index, outcome in sorted(latencies.items()) if isinstance(outcome, str)]
    if failures:
        raise SystemExit("\n".join(failures))

    images_per_client = args.requests * args.static_batch_size
    for index in sorted(latencies):
        client_time = sum(latencies[index])
        print(f"Client: {index} Throughput: {images_per_client / client_time:.4f} "
              f"Avg. Latency: {client_time / len(latencies[index]):.4f}")
    print(f"Throughput: {images_per_client * args.clients / total:.4f} Total Time: {total:.4f}")


if __name__ == "__main__":
    main()
