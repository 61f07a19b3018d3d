"""Evaluates Stratify experiments as OpenFeature flags through the official
Python SDK (openfeature-sdk) and its OFREP provider
(openfeature-provider-ofrep), both from PyPI.

Usage: openfeature_check.py BASE_URL API_KEY EXPECTED_JSON
EXPECTED_JSON: {"user": ..., "pizza_variant": ..., "pizza_value": {...} | null,
                "color_variant": ...}
Exits non-zero with a message on the first mismatch.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import Reason


def check(what, got, want):
    if got != want:
        sys.exit(f"{what}: got {got!r}, want {want!r}")


def main():
    base, key, expected = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    api.set_provider(
        OFREPProvider(base, headers_factory=lambda: {"Authorization": f"Bearer {key}"})
    )
    client = api.get_client()
    user = EvaluationContext(targeting_key=expected["user"])

    # An object payload: the variant's payload is the value.
    d = client.get_object_details("pizza", {"tile": "none"}, user)
    check("pizza error", d.error_code, None)
    check("pizza variant", d.variant, expected["pizza_variant"])
    check("pizza reason", d.reason, Reason.SPLIT)
    if expected["pizza_value"] is not None:
        check("pizza value", d.value, expected["pizza_value"])
    check("pizza metadata", d.flag_metadata.get("in_experiment"), True)

    # No payload: the value is the variant's key.
    d = client.get_string_details("button-color", "grey", user)
    check("color value", d.value, expected["color_variant"])
    check("color variant", d.variant, expected["color_variant"])

    # Targeting by context attributes: outside it, the code default.
    premium = EvaluationContext(targeting_key=expected["user"], attributes={"plan": "premium"})
    free = EvaluationContext(targeting_key=expected["user"], attributes={"plan": "free"})
    d = client.get_boolean_details("premium-only", False, premium)
    check("premium value", d.value, True)
    check("premium reason", d.reason, Reason.SPLIT)
    d = client.get_boolean_details("premium-only", False, free)
    check("free value", d.value, False)
    check("free reason", d.reason, Reason.DEFAULT)
    check("free error", d.error_code, None)

    # A paused experiment is disabled: the code default.
    d = client.get_string_details("paused-flag", "off", user)
    check("paused value", d.value, "off")
    check("paused reason", d.reason, Reason.DISABLED)

    # Errors carry the protocol's codes; the caller gets its default.
    d = client.get_string_details("no-such-flag", "fallback", user)
    check("missing flag value", d.value, "fallback")
    check("missing flag code", d.error_code, ErrorCode.FLAG_NOT_FOUND)
    d = client.get_string_details("button-color", "fallback", EvaluationContext())
    check("no targeting key value", d.value, "fallback")
    check("no targeting key code", d.error_code, ErrorCode.TARGETING_KEY_MISSING)
    # A type the flag does not have: the default, with a type mismatch.
    d = client.get_integer_details("pizza", 7, user)
    check("mismatch value", d.value, 7)
    check("mismatch code", d.error_code, ErrorCode.TYPE_MISMATCH)
    print("openfeature: all checks passed")


if __name__ == "__main__":
    main()
