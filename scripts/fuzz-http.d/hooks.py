# Schemathesis hooks of scripts/fuzz-http (loaded through SCHEMATHESIS_HOOKS).
#
# Two things are changed in what the fuzzer sends, and only within what the document allows.
#
# InitializeVEEs takes its query parameters (model, count, tags, ...) with an OVF envelope
# only; with a JSON body, which carries model and count itself, any query parameter is refused
# (400). OpenAPI cannot tie parameters to one media type, so the fuzzer adds them to JSON
# bodies too, and almost no JSON InitializeVEEs would define a VEE: none would reach the
# operations on VEEs that follow it (links). The query is dropped from JSON requests here; the
# refusal itself is an e2e test (errors.rs, a_json_initialize_refuses_query_parameters).
#
# UpdateState's `timeout_ms` (documented up to 3,600,000 ms, 60,000 when absent or null) is set to at
# most 2,000 ms. An ACTIVATE of a VEE no host can take waits for placement until `timeout_ms`
# runs out, which is right for an SM and would make a time-bounded fuzzing run wait a minute,
# or an hour, on one request. A valid large value takes the same code path as 2,000, and values
# that are not valid (above the maximum, negative, not numbers) are left as generated, so the
# server's refusal of them is still checked.
import schemathesis
from hypothesis.internal import lambda_sources

# Not about what is sent: CPython 3.11.7 (this machine's) at times raises "SystemError: AST
# constructor recursion depth mismatch" from ast.parse deep in a call stack, a CPython bug. Hypothesis
# calls ast.parse only to print a filter's lambda in a strategy's repr, and schemathesis then
# reports the operation as a runtime error of the fuzzer, at random. A lambda whose source
# cannot be parsed is described as "lambda" instead: the repr is all that changes.
_describe_lambda = lambda_sources.lambda_description


def _describe_lambda_or_not(f):
    try:
        return _describe_lambda(f)
    except SystemError:
        return "lambda"


lambda_sources.lambda_description = _describe_lambda_or_not

TIMEOUT_MS_MAX_DOCUMENTED = 3_600_000
TIMEOUT_MS_WHILE_FUZZING = 2_000


@schemathesis.hook
def before_call(context, case, **kwargs):
    if case.path.endswith("/vees/initialize") and "json" in (case.media_type or ""):
        case.query = {}
        return
    body = case.body
    if not (isinstance(body, dict) and case.path.endswith("/vees/update-state")):
        return
    if body.get("timeout_ms") is None:  # absent or null: the server's default, 60,000
        body["timeout_ms"] = TIMEOUT_MS_WHILE_FUZZING
        return
    timeout = body["timeout_ms"]
    if (
        isinstance(timeout, int)
        and not isinstance(timeout, bool)
        and TIMEOUT_MS_WHILE_FUZZING < timeout <= TIMEOUT_MS_MAX_DOCUMENTED
    ):
        body["timeout_ms"] = TIMEOUT_MS_WHILE_FUZZING
