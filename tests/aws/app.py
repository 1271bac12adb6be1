"""A Python Lambda function as AWS's docs write one, run by AWS's own
runtime interface client (awslambdaric) in tests/e2e/lambda.rs."""


def handler(event, context):
    path = event.get("rawPath", "")
    if path == "/error":
        raise ValueError("python says no")
    method = event["requestContext"]["http"]["method"]
    return {
        "statusCode": 200,
        "headers": {"content-type": "text/plain"},
        "body": (
            f"hello from python: {method} {path} "
            f"function={context.function_name} memory={context.memory_limit_in_mb} "
            f"body={event.get('body', '')}"
        ),
    }
