"""The SAM template, parsed: least privilege, the queue's safety nets, the API's authorizer.

These read template.yaml as CloudFormation sees it (cfn-lint's loader turns !Ref, !Sub ...
into their long forms). What AWS itself would refuse is cfn-lint's job, run at the end.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml

import lookalike.settings
from lookalike.edges import http_api
from lookalike.embedding import FeatureModel
from tests.conftest import REPO_ROOT

TEMPLATE_PATH = REPO_ROOT / "template.yaml"
NO_VALUE = {"Ref": "AWS::NoValue"}
#: Actions that have no resource-level permissions: the only ones allowed on Resource "*".
RESOURCELESS_ACTIONS = {"xray:PutTraceSegments", "xray:PutTelemetryRecords"}
ROUTES = {
    "POST /search",
    "GET /images",
    "GET /images/{key+}",
    "DELETE /images/{key+}",
    "GET /thumbnails/{key+}",
    "POST /uploads",
    "GET /health",
    "GET /openapi.json",
    "GET /",
    "GET /static/{path+}",
}
#: The only routes without the JWT authorizer: the page must load before anyone signs in.
PUBLIC_ROUTES = {"GET /health", "GET /openapi.json", "GET /", "GET /static/{path+}"}


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    loaded: dict[str, Any] = cfn_yaml.load(str(TEMPLATE_PATH))
    return loaded


@pytest.fixture(scope="module")
def resources(template: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = template["Resources"]
    return found


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def branches(value: Any) -> Iterator[Any]:
    """Every value an Fn::If can take (AWS::NoValue dropped), or the value itself."""
    if isinstance(value, dict) and set(value) == {"Fn::If"}:
        _, when_true, when_false = value["Fn::If"]
        for branch in (when_true, when_false):
            if branch != NO_VALUE:
                yield from branches(branch)
    else:
        yield value


def references(value: Any) -> set[str]:
    """Logical ids that ``value`` refers to through Ref, Fn::GetAtt or Fn::Sub."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Ref":
                found.add(inner)
            elif key == "Fn::GetAtt":
                found.add(inner[0])
            elif key == "Fn::Sub":
                text = inner if isinstance(inner, str) else inner[0]
                found |= {name.split(".")[0] for name in re.findall(r"\$\{([^}!]+)\}", text)}
            found |= references(inner)
    elif isinstance(value, list):
        for inner in value:
            found |= references(inner)
    return found


def role_statements(resources: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The role's inline policy statements, both sides of every condition included."""
    statements: list[dict[str, Any]] = []
    for policy in resources[role]["Properties"]["Policies"]:
        for statement in policy["PolicyDocument"]["Statement"]:
            statements.extend(branches(statement))
    return statements


def function_role(resources: dict[str, Any], function: str) -> str:
    role = resources[function]["Properties"]["Role"]
    assert role == {"Fn::GetAtt": [role["Fn::GetAtt"][0], "Arn"]}, f"{function} names its role by GetAtt"
    name: str = role["Fn::GetAtt"][0]
    return name


def granted(resources: dict[str, Any], role: str, service: str) -> set[str]:
    return {
        action
        for statement in role_statements(resources, role)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
        if action.startswith(f"{service}:")
    }


def functions(resources: dict[str, Any]) -> dict[str, Any]:
    return {name: r for name, r in resources.items() if r["Type"] == "AWS::Serverless::Function"}


def environment(template: dict[str, Any], function: str) -> dict[str, Any]:
    shared = template["Globals"]["Function"]["Environment"]["Variables"]
    own = template["Resources"][function]["Properties"].get("Environment", {}).get("Variables", {})
    return {**shared, **own}


# ---------------------------------------------------------------------------- least privilege


def test_every_function_has_its_own_role_so_sam_attaches_no_managed_policy(resources: dict[str, Any]) -> None:
    # An SQS event would make SAM attach AWSLambdaSQSQueueExecutionRole (sqs:ReceiveMessage on "*")
    # to a role it generates; a role of our own gets nothing it does not list.
    assert set(functions(resources)) == {"IndexerFunction", "SearchFunction", "ReconcilerFunction"}
    for name, function in functions(resources).items():
        assert "Policies" not in function["Properties"], name
        role = function_role(resources, name)
        assert resources[role]["Type"] == "AWS::IAM::Role"
        assert "ManagedPolicyArns" not in resources[role]["Properties"], role


def test_no_statement_grants_a_wildcard_action(resources: dict[str, Any]) -> None:
    for role in (function_role(resources, f) for f in functions(resources)):
        for statement in role_statements(resources, role):
            for action in as_list(statement["Action"]):
                assert "*" not in action, f"{role} {statement.get('Sid')}: {action}"


def test_only_actions_without_resource_level_permissions_get_resource_star(resources: dict[str, Any]) -> None:
    star_actions = set()
    for role in (function_role(resources, f) for f in functions(resources)):
        for statement in role_statements(resources, role):
            if "*" in as_list(statement["Resource"]):
                star_actions |= set(as_list(statement["Action"]))
    assert star_actions == RESOURCELESS_ACTIONS


def test_the_indexer_cannot_write_to_the_bucket_that_triggers_it(resources: dict[str, Any]) -> None:
    role = function_role(resources, "IndexerFunction")
    assert granted(resources, role, "s3") == {"s3:GetObject", "s3:GetObjectVersion", "s3:ListBucket"}
    assert granted(resources, role, "sqs") == {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:GetQueueAttributes"}
    assert granted(resources, role, "dynamodb") == {
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:DeleteItem",
    }
    for statement in role_statements(resources, role):
        actions = as_list(statement["Action"])
        if any(a.startswith("sqs:") for a in actions):
            assert statement["Resource"] == {"Fn::GetAtt": ["IndexQueue", "Arn"]}
        if any(a.startswith("dynamodb:") for a in actions):
            assert statement["Resource"] == {"Fn::GetAtt": ["IdempotencyTable", "Arn"]}


def test_the_search_function_reaches_only_owner_prefixed_objects_and_no_table(resources: dict[str, Any]) -> None:
    role = function_role(resources, "SearchFunction")
    assert granted(resources, role, "s3") == {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"}
    assert not granted(resources, role, "dynamodb")
    assert not granted(resources, role, "sqs")
    for statement in role_statements(resources, role):
        actions = as_list(statement["Action"])
        if actions == ["s3:ListBucket"]:
            # Listing is a bucket action: only the owners' prefix may be listed.
            assert statement["Resource"] == {"Fn::GetAtt": ["UploadBucket", "Arn"]}
            assert statement.get("Condition") == {"StringLike": {"s3:prefix": {"Fn::Sub": "${OwnerKeyPrefix}*"}}}
        elif any(a.startswith("s3:") for a in actions):
            assert "s3:ListBucket" not in actions
            assert statement["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/${OwnerKeyPrefix}*"}


def test_the_reconciler_reads_owners_uploads_and_writes_only_its_checkpoint(resources: dict[str, Any]) -> None:
    role = function_role(resources, "ReconcilerFunction")
    assert granted(resources, role, "s3") == {"s3:GetObject", "s3:PutObject", "s3:ListBucket"}
    assert not granted(resources, role, "sqs")
    assert not granted(resources, role, "dynamodb")
    for statement in role_statements(resources, role):
        actions = as_list(statement["Action"])
        if "s3:PutObject" in actions:
            assert statement["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/_lookalike/reconcile/state.json"}
        elif actions == ["s3:GetObject"]:
            assert statement["Resource"] == {"Fn::Sub": "${UploadBucket.Arn}/${OwnerKeyPrefix}*"}


def test_the_reconciler_runs_one_at_a_time_on_a_schedule_and_alarms_on_failure(resources: dict[str, Any]) -> None:
    reconciler = resources["ReconcilerFunction"]["Properties"]
    assert reconciler["ReservedConcurrentExecutions"] == 1
    (event,) = reconciler["Events"].values()
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["ScheduleExpression"] == {"Ref": "ReconcileSchedule"}
    alarm = resources["ReconcilerErrorsAlarm"]["Properties"]
    assert alarm["MetricName"] == "Errors"
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {"Ref": "ReconcilerFunction"}}]


def test_the_milvus_token_is_read_from_its_secret_by_arn_only(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    for name in functions(resources):
        role = function_role(resources, name)
        assert granted(resources, role, "secretsmanager") == {"secretsmanager:GetSecretValue"}
        secret_statements = [
            s for s in role_statements(resources, role) if "secretsmanager:GetSecretValue" in s["Action"]
        ]
        assert [s["Resource"] for s in secret_statements] == [{"Ref": "MilvusTokenSecretArn"}]
        env = environment(template, name)
        assert env["MILVUS_TOKEN_SECRET_ARN"] == {"Ref": "MilvusTokenSecretArn"}
        # lookalike.settings also reads a plain MILVUS_TOKEN (for laptops): never in Lambda.
        assert not [key for key in env if re.search("TOKEN|SECRET|PASSWORD", key) and not key.endswith("_ARN")]


def test_opensearch_access_follows_the_auth_mode(resources: dict[str, Any]) -> None:
    expected = {
        "IndexerFunction": {"es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpDelete"},
        "SearchFunction": {"es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost"},
        "ReconcilerFunction": {"es:ESHttpGet", "es:ESHttpHead", "es:ESHttpPost", "es:ESHttpPut", "es:ESHttpDelete"},
    }
    for name, es_actions in expected.items():
        role = function_role(resources, name)
        conditional = {}
        for policy in resources[role]["Properties"]["Policies"]:
            for statement in policy["PolicyDocument"]["Statement"]:
                if "Fn::If" in statement:
                    condition, when, otherwise = statement["Fn::If"]
                    assert otherwise == NO_VALUE
                    conditional[condition] = when
        assert set(conditional["IsOpenSearchManaged"]["Action"]) == es_actions
        assert conditional["IsOpenSearchManaged"]["Resource"] == {"Fn::Sub": "${OpenSearchResourceArn}/*"}
        assert conditional["IsOpenSearchServerless"]["Action"] == "aoss:APIAccessAll"
        assert conditional["IsOpenSearchServerless"]["Resource"] == {"Ref": "OpenSearchResourceArn"}


def test_serverless_data_access_lets_the_search_role_only_read(resources: dict[str, Any]) -> None:
    policy = resources["OpenSearchDataAccessPolicy"]
    assert policy["Condition"] == "IsOpenSearchServerless"
    text, names = policy["Properties"]["Policy"]["Fn::Sub"]
    rules = json.loads(re.sub(r"\$\{(\w+)\}", lambda m: m.group(1), text))
    by_principal = {principal: rule["Rules"][0] for rule in rules for principal in rule["Principal"]}
    assert names == {
        "IndexerRoleArn": {"Fn::GetAtt": ["IndexerRole", "Arn"]},
        "SearchRoleArn": {"Fn::GetAtt": ["SearchRole", "Arn"]},
        "ReconcilerRoleArn": {"Fn::GetAtt": ["ReconcilerRole", "Arn"]},
    }
    assert set(by_principal["SearchRoleArn"]["Permission"]) == {"aoss:DescribeIndex", "aoss:ReadDocument"}
    assert "aoss:WriteDocument" in by_principal["IndexerRoleArn"]["Permission"]
    assert "aoss:WriteDocument" in by_principal["ReconcilerRoleArn"]["Permission"]
    for rule in by_principal.values():
        assert rule["Resource"] == ["index/OpenSearchCollectionName/OpenSearchIndex*"]


# ---------------------------------------------------------------------------- bucket and queue


def test_the_bucket_is_versioned_private_encrypted_and_tls_only(resources: dict[str, Any]) -> None:
    bucket = resources["UploadBucket"]["Properties"]
    assert bucket["VersioningConfiguration"] == {"Status": "Enabled"}
    assert all(bucket["PublicAccessBlockConfiguration"].values())
    assert len(bucket["PublicAccessBlockConfiguration"]) == 4
    assert bucket["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    (deny,) = resources["UploadBucketPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


def test_every_upload_change_notifies_the_index_queue(resources: dict[str, Any]) -> None:
    notifications = resources["UploadBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    assert {n["Event"] for n in notifications} == {
        "s3:ObjectCreated:*",
        "s3:ObjectRemoved:*",
        "s3:LifecycleExpiration:*",
    }
    assert all(n["Queue"] == {"Fn::GetAtt": ["IndexQueue", "Arn"]} for n in notifications)
    # Nothing outside the owners' prefix is an upload (the reconciler's checkpoint lives there).
    owners_prefix = {"S3Key": {"Rules": [{"Name": "prefix", "Value": {"Ref": "OwnerKeyPrefix"}}]}}
    assert all(n["Filter"] == owners_prefix for n in notifications)


def test_the_queue_policy_names_the_bucket_without_a_reference_cycle(resources: dict[str, Any]) -> None:
    # S3 checks its permission to send when the notification is created, so the bucket waits for
    # the queue policy; the policy therefore names the bucket by its deterministic name.
    bucket = resources["UploadBucket"]
    assert bucket["DependsOn"] == "IndexQueuePolicy"
    (statement,) = resources["IndexQueuePolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Principal"] == {"Service": "s3.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    source = statement["Condition"]["ArnEquals"]["aws:SourceArn"]["Fn::Sub"]
    assert source == "arn:${AWS::Partition}:s3:::" + bucket["Properties"]["BucketName"]["Fn::Sub"]
    assert "UploadBucket" not in references(resources["IndexQueuePolicy"])


def test_the_queue_retries_then_dead_letters(resources: dict[str, Any]) -> None:
    queue = resources["IndexQueue"]["Properties"]
    dlq = resources["IndexDeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["IndexDeadLetterQueue", "Arn"]}
    assert 1 < queue["RedrivePolicy"]["maxReceiveCount"] <= 5
    # A message keeps its first enqueue time in the DLQ, so the DLQ must keep messages longer.
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600 > queue["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] and dlq["SqsManagedSseEnabled"]
    alarm = resources["IndexDeadLetterAlarm"]["Properties"]
    assert alarm["Dimensions"] == [
        {"Name": "QueueName", "Value": {"Fn::GetAtt": ["IndexDeadLetterQueue", "QueueName"]}}
    ]
    assert (alarm["ComparisonOperator"], alarm["Threshold"]) == ("GreaterThanThreshold", 0)


def test_a_batch_in_flight_is_not_handed_out_again(resources: dict[str, Any]) -> None:
    indexer = resources["IndexerFunction"]["Properties"]
    event = indexer["Events"]["Uploads"]["Properties"]
    visibility = resources["IndexQueue"]["Properties"]["VisibilityTimeout"]
    assert visibility >= 6 * indexer["Timeout"] + event["MaximumBatchingWindowInSeconds"]


def test_the_indexer_reports_partial_failures_at_bounded_concurrency(
    template: dict[str, Any], resources: dict[str, Any]
) -> None:
    event = resources["IndexerFunction"]["Properties"]["Events"]["Uploads"]
    assert event["Type"] == "SQS"
    assert event["Properties"]["Queue"] == {"Fn::GetAtt": ["IndexQueue", "Arn"]}
    assert event["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert event["Properties"]["ScalingConfig"] == {"MaximumConcurrency": {"Ref": "IndexerMaxConcurrency"}}
    parameter = template["Parameters"]["IndexerMaxConcurrency"]
    assert (parameter["MinValue"], parameter["MaxValue"]) == (2, 1000)  # what SQS event sources accept
    assert environment(template, "IndexerFunction")["LOOKALIKE_IDEMPOTENCY_TABLE"] == {"Ref": "IdempotencyTable"}
    table = resources["IdempotencyTable"]["Properties"]
    assert table["KeySchema"] == [{"AttributeName": "id", "KeyType": "HASH"}]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "expiration", "Enabled": True}


# ---------------------------------------------------------------------------- the API


def http_routes(resources: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each route ("METHOD /path") to its HttpApi event's properties, over every function."""
    routes = {}
    for name, function in functions(resources).items():
        for event in function["Properties"].get("Events", {}).values():
            if event["Type"] == "HttpApi":
                assert event["Properties"]["ApiId"] == {"Ref": "SearchApi"}, name
                routes[f"{event['Properties']['Method']} {event['Properties']['Path']}"] = event["Properties"]
    return routes


def test_only_the_public_allow_list_skips_the_jwt_authorizer(resources: dict[str, Any]) -> None:
    auth = resources["SearchApi"]["Properties"]["Auth"]
    default = auth["DefaultAuthorizer"]
    assert auth["Authorizers"][default]["JwtConfiguration"] == {
        "issuer": {"Ref": "JwtIssuerUrl"},
        "audience": {"Ref": "JwtAudience"},
    }
    routes = http_routes(resources)
    assert set(routes) == ROUTES
    for route, properties in routes.items():
        if route in PUBLIC_ROUTES:
            assert properties.get("Auth") == {"Authorizer": "NONE"}, route
        else:
            # No Auth keeps the default JWT authorizer; naming it again is the only other choice.
            assert properties.get("Auth", {"Authorizer": default}) == {"Authorizer": default}, route


def test_the_template_routes_are_the_routes_the_api_serves(resources: dict[str, Any]) -> None:
    # The API's own OpenAPI document lists its data routes and the public operations; API
    # Gateway's greedy {name+} is Powertools' <name>, which this API makes match slashes too.
    document = json.loads(http_api.app.get_openapi_json_schema())
    documented = {
        method.upper() + " " + re.sub(r"\{(\w+)\}", r"{\1+}", path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }
    public_in_api = {route for route, operation in documented.items() if not operation.get("security")}
    routes = http_routes(resources)
    public = {route for route, properties in routes.items() if properties.get("Auth") == {"Authorizer": "NONE"}}
    assert set(documented) <= set(routes)
    assert public_in_api <= public
    assert set(documented) - public_in_api == set(routes) - public

    # The page and its files are left out of the document: ask the API for them, with a backend
    # that must not be needed.
    def no_backend() -> http_api.ApiBackend:
        raise AssertionError("the page needs no backend")

    for route in sorted(set(routes) - set(documented)):
        method, path = route.split(" ")
        concrete = path.replace("{path+}", "app.js")
        event = {
            "version": "2.0",
            "routeKey": route,
            "rawPath": concrete,
            "rawQueryString": "",
            "headers": {"host": "api.example.com"},
            "requestContext": {"http": {"method": method, "path": concrete}, "stage": "$default"},
            "isBase64Encoded": False,
        }
        assert http_api.handle(event, None, no_backend)["statusCode"] == 200, route


def test_the_api_is_throttled_and_cors_names_one_origin(resources: dict[str, Any]) -> None:
    api = resources["SearchApi"]["Properties"]
    assert api["DefaultRouteSettings"] == {
        "ThrottlingRateLimit": {"Ref": "ApiThrottlingRate"},
        "ThrottlingBurstLimit": {"Ref": "ApiThrottlingBurst"},
    }
    assert api["CorsConfiguration"]["AllowOrigins"] == [{"Ref": "CorsAllowOrigin"}]
    # A page on that origin may call every method a route answers, and nothing else.
    assert set(api["CorsConfiguration"]["AllowMethods"]) == {route.split(" ")[0] for route in ROUTES}


# ---------------------------------------------------------------------------- functions and layers


def lock_python_version() -> str:
    header = (REPO_ROOT / "requirements" / "runtime.lock").read_text().splitlines()[1]
    match = re.search(r"--python-version (\d+\.\d+)", header)
    assert match, f"runtime.lock's header names no --python-version: {header}"
    return match.group(1)


def test_every_function_runs_the_locked_python_with_both_layers(template: dict[str, Any]) -> None:
    defaults = template["Globals"]["Function"]
    # Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34); the locked wheels need 2.28.
    assert defaults["Runtime"] == f"python{lock_python_version()}" == "python3.12"
    assert defaults["Architectures"] == ["x86_64"]
    assert defaults["Tracing"] == "Active"
    assert defaults["Layers"] == [{"Ref": "CoreLayer"}, {"Ref": "ModelLayer"}]
    for name, function in functions(template["Resources"]).items():
        overridden = {"Runtime", "Layers", "Architectures"} & set(function["Properties"])
        assert not overridden, f"{name} overrides {overridden}"
    for layer in ("CoreLayer", "ModelLayer"):
        assert template["Resources"][layer]["Properties"]["CompatibleRuntimes"] == [defaults["Runtime"]]


def test_everything_is_built_by_its_own_makefile(resources: dict[str, Any]) -> None:
    # Makefile builders need no Docker, and no python3.12 on PATH for SAM itself.
    built = {name: r for name, r in resources.items() if r["Type"].startswith("AWS::Serverless::")}
    for name, resource in built.items():
        if resource["Type"] not in {"AWS::Serverless::Function", "AWS::Serverless::LayerVersion"}:
            continue
        properties = resource["Properties"]
        folder = REPO_ROOT / properties.get("CodeUri", properties.get("ContentUri"))
        assert resource["Metadata"]["BuildMethod"] == "makefile", name
        makefile = (folder / "Makefile").read_text()
        assert re.search(rf"^build-{name}:", makefile, flags=re.MULTILINE), f"{folder}/Makefile has no build-{name}"


@pytest.mark.parametrize("model", ["vgg16-gmp-int8", "vgg16-gmp-fp32"])
def test_the_model_layer_ships_the_chosen_model_where_the_functions_look(
    template: dict[str, Any], model: str, tmp_path: Path
) -> None:
    # Given the model layer built for one model (as `sam build` runs its Makefile)
    makefile = REPO_ROOT / "layers" / "model" / "Makefile"
    environment = os.environ | {"ARTIFACTS_DIR": str(tmp_path), "LAMBDA_MODEL": model}
    subprocess.run(["make", "-s", "-f", str(makefile), "build-ModelLayer"], env=environment, check=True)

    # When a function opens the model its environment names, as /opt (the layer) holds it
    model_path = template["Globals"]["Function"]["Environment"]["Variables"]["LOOKALIKE_MODEL_PATH"]
    assert model_path == str(lookalike.settings.LAMBDA_MODEL_PATH)
    shipped = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    opened = FeatureModel(tmp_path / Path(model_path).relative_to("/opt"), threads=1)

    # Then it is that one model, named by the facts beside it
    assert shipped == ["model/feature-model.json", "model/feature-model.onnx"]
    assert opened.name == model
    assert opened.dimension == 512


def test_the_default_lambda_model_is_the_same_everywhere() -> None:
    defaults = {
        path: re.findall(r"^LAMBDA_MODEL\s*\?=\s*(\S+)", (REPO_ROOT / path).read_text(), flags=re.MULTILINE)
        for path in ("Makefile", "layers/model/Makefile")
    }
    assert defaults == {"Makefile": ["vgg16-gmp-int8"], "layers/model/Makefile": ["vgg16-gmp-int8"]}


def test_every_lookalike_variable_is_one_the_settings_read(template: dict[str, Any]) -> None:
    source = Path(lookalike.settings.__file__).read_text()
    names = set(environment(template, "IndexerFunction")) | set(environment(template, "SearchFunction"))
    ours = {n for n in names if n.startswith(("LOOKALIKE_", "MILVUS_", "OPENSEARCH_"))}
    assert len(ours) >= 12
    assert {n for n in ours if f'"{n}"' not in source} == set()
    assert "LOOKALIKE_IDEMPOTENCY_TABLE" not in environment(template, "SearchFunction")
    assert "LOOKALIKE_UPLOAD_URL_EXPIRES" not in environment(template, "IndexerFunction")


def test_each_handler_the_template_names_exists(resources: dict[str, Any]) -> None:
    for name, function in functions(resources).items():
        module, attribute = function["Properties"]["Handler"].rsplit(".", 1)
        path = REPO_ROOT / function["Properties"]["CodeUri"] / f"{module}.py"
        tree = ast.parse(path.read_text())
        defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)} | {
            target.id
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name)
        }
        assert attribute in defined, f"{name}: {path.relative_to(REPO_ROOT)} defines no {attribute}"


def test_sample_events_cover_each_notification_type(resources: dict[str, Any]) -> None:
    patterns = [
        n["Event"] for n in resources["UploadBucket"]["Properties"]["NotificationConfiguration"]["QueueConfigurations"]
    ]
    seen = set()
    for path in sorted((REPO_ROOT / "events").glob("sqs-*.json")):
        for record in json.loads(path.read_text())["Records"]:
            for s3_record in json.loads(record["body"]).get("Records", []):
                name = "s3:" + s3_record["eventName"]
                matching = [p for p in patterns if fnmatch.fnmatchcase(name, p)]
                assert matching, f"{path.name}: {name} is not an event the bucket sends"
                seen.update(matching)
    assert seen == set(patterns)


def test_cfn_lint_finds_nothing() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    done = subprocess.run([str(cfn_lint), str(TEMPLATE_PATH)], capture_output=True, text=True, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")


def test_every_skipped_security_check_says_why_beside_its_resource() -> None:
    # `make template-scan` (checkov) honours these; a bare skip would hide a finding unexplained.
    skips = re.findall(r"#\s*checkov:skip=(CKV_\w+)(.*)$", TEMPLATE_PATH.read_text(), flags=re.MULTILINE)
    assert len(skips) >= 10
    for check, reason in skips:
        assert reason.startswith(": ") and len(reason) > 40, f"{check} is skipped without a reason"
