"""What every checker shares: the verdict, calling the student's function, comparing.

A checker compares the student's answer with the right value and with each
known mistake (a small variant of the right computation); these helpers do
the calling, the shape checks and the comparisons, and word the verdicts.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np
import torch

Answer = Union[Callable, torch.Tensor]


class WrongAnswer(AssertionError):
    """An exercise answer is wrong; the message is the diagnosis."""


def _correct(message: str) -> str:
    verdict = f"correct: {message}"
    print(verdict)
    return verdict


def _call(fn: Callable, what: str, *args, **kwargs):
    """Call the student's function; turn its exceptions into a diagnosis."""
    if not callable(fn):
        raise WrongAnswer(f"pass your function itself (e.g. my_{what}, without parentheses), "
                          f"got a {type(fn).__name__}.")
    try:
        return fn(*args, **kwargs)
    except WrongAnswer:
        raise
    except Exception as error:  # the student's bug, reported with the input that caused it
        raise WrongAnswer(f"your {what} raised {type(error).__name__}: {error}\n"
                          f"on the input {_show(args)} {_show(kwargs) if kwargs else ''}") from error


def _show(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.tolist()})"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}={_show(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _tensor(result, what: str, shape: Tuple[int, ...]) -> torch.Tensor:
    """The answer as a float tensor of ``shape``, or a diagnosis."""
    if isinstance(result, np.ndarray):
        result = torch.from_numpy(result)
    if not isinstance(result, torch.Tensor):
        raise WrongAnswer(f"your {what} must return a torch.Tensor of shape {shape}, got "
                          f"{type(result).__name__}.")
    if tuple(result.shape) != tuple(shape):
        raise WrongAnswer(f"your {what} returned shape {tuple(result.shape)}; expected {shape}.")
    return result.detach().to(torch.float64).cpu()


def _same(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-4) -> bool:
    a, b = a.to(torch.float64), b.to(torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=atol, rtol=1e-4, equal_nan=True))


def _known_mistake(got: torch.Tensor, variants: Dict[str, torch.Tensor], atol: float = 1e-4
                   ) -> Optional[str]:
    """The diagnosis of the first mistake variant ``got`` reproduces, else None."""
    for diagnosis, value in variants.items():
        if _same(got, value, atol):
            return diagnosis
    return None


def _first_difference(got: torch.Tensor, expected: torch.Tensor, what: str, inputs: str,
                      atol: float = 1e-4) -> str:
    bad = ~torch.isclose(got.to(torch.float64), expected.to(torch.float64), atol=atol, rtol=1e-4)
    index = tuple(int(i) for i in bad.nonzero()[0])
    return (f"your {what} is wrong at index {index}: got {got[index].item():.6g}, expected "
            f"{expected[index].item():.6g}.\nInputs: {inputs}")


def _centres_sizes(boxes: torch.Tensor):
    return ((boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
            boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
