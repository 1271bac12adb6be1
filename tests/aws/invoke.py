"""Calls wisp's Lambda Invoke API with boto3, as code written for AWS does.

Usage: invoke.py ENDPOINT FUNCTION. The function is tests' `lambda-hello`
(functions/lambda-hello). Exits non-zero, saying what differed, on the
first answer that is not what AWS Lambda would give.
"""

import base64
import json
import sys

import boto3
import botocore.config


def main():
    endpoint, function = sys.argv[1], sys.argv[2]
    client = boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        # boto3 signs every request; wisp does not check the signature.
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        config=botocore.config.Config(retries={"max_attempts": 1}),
    )

    def payload(answer):
        return json.loads(answer["Payload"].read())

    done = client.invoke(FunctionName=function, Payload=json.dumps({"rawPath": "/plain"}))
    assert done["StatusCode"] == 200, done
    assert "FunctionError" not in done, done
    assert payload(done) == {"message": "no statusCode here"}

    failed = client.invoke(FunctionName=function, Payload=json.dumps({"rawPath": "/error"}))
    assert failed["StatusCode"] == 200, failed
    assert failed["FunctionError"] == "Unhandled", failed
    assert payload(failed)["errorMessage"] == "the handler failed on purpose"

    tailed = client.invoke(
        FunctionName=function, Payload=json.dumps({"rawPath": "/plain"}), LogType="Tail"
    )
    base64.b64decode(tailed["LogResult"])

    queued = client.invoke(
        FunctionName=function, InvocationType="Event", Payload=json.dumps({"rawPath": "/plain"})
    )
    assert queued["StatusCode"] == 202, queued

    dry = client.invoke(FunctionName=function, InvocationType="DryRun")
    assert dry["StatusCode"] == 204, dry

    try:
        client.invoke(FunctionName="no-such-function", Payload=b"{}")
    except client.exceptions.ResourceNotFoundException:
        pass
    else:
        raise AssertionError("an unknown function must be ResourceNotFoundException")
    print("ok")


if __name__ == "__main__":
    main()
