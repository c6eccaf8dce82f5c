"""Access denied by object storage, through the command line in its own process: one line on stderr, a non-zero
exit, nothing at OUTPUT. A moto server of its own enforces access: users and policies are made while it lets
every request through, then it checks each request's signature against its users and their policies."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import random_image, write_geotiff
from .object_store import moto_server
from .test_cli import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
#: What the "reader" may do: read and list every bucket, write nothing.
READ_ONLY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation"], "Resource": "*"}
    ],
}
EVERYTHING = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}


@dataclass
class GuardedS3:
    endpoint: str
    #: Access key pairs by user: "admin" (everything), "reader" (READ_ONLY), "nobody" (no policy).
    keys: dict[str, tuple[str, str]]
    scene_url: str

    def client(self, service: str, user: str | None = None) -> Any:
        import boto3

        key, secret = self.keys[user] if user else ("setup", "setup")
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def keys_in(self, bucket: str) -> list[str]:
        listing = self.client("s3", "admin").list_objects_v2(Bucket=bucket)
        return sorted(obj["Key"] for obj in listing.get("Contents", ()))

    def cli(self, user: str, *argv: object) -> tuple[int, str]:
        """``tilewise`` run as ``user`` in a process of its own: its exit status and its stderr."""
        key, secret = self.keys[user]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(
            AWS_ENDPOINT_URL=self.endpoint,
            AWS_ACCESS_KEY_ID=key,
            AWS_SECRET_ACCESS_KEY=secret,
            AWS_REGION="us-east-1",
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
        )
        cmd = [sys.executable, "-m", "pipeline.cli", *(str(a) for a in argv)]
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)
        return done.returncode, done.stderr


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GuardedS3]:
    with moto_server() as (endpoint, _):
        server = GuardedS3(endpoint, {}, "s3://inputs/scene.tif")
        iam, s3 = server.client("iam"), server.client("s3")
        for user, policy in (("admin", EVERYTHING), ("reader", READ_ONLY), ("nobody", None)):
            iam.create_user(UserName=user)
            if policy is not None:
                iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
            created = iam.create_access_key(UserName=user)["AccessKey"]
            server.keys[user] = (created["AccessKeyId"], created["SecretAccessKey"])
        for bucket in ("inputs", "outputs"):
            s3.create_bucket(Bucket=bucket)
        scene = write_geotiff(tmp_path_factory.mktemp("denied") / "scene.tif", random_image((3, 80, 90), seed=1))
        s3.upload_file(str(scene), "inputs", "scene.tif")
        # From here on every request must be signed by a user and allowed by the user's policy.
        reset = f"{server.endpoint}/moto-api/reset-auth"
        urllib.request.urlopen(urllib.request.Request(reset, b"0", {"Content-Type": "text/plain"}, method="POST"))
        yield server


def test_the_server_enforces_the_policies(guarded: GuardedS3) -> None:
    """What the other tests rely on: the reader reads, the reader cannot write, nobody cannot read."""
    from botocore.exceptions import ClientError

    assert guarded.client("s3", "reader").head_object(Bucket="inputs", Key="scene.tif")["ContentLength"] > 0
    with pytest.raises(ClientError, match="AccessDenied"):
        guarded.client("s3", "reader").put_object(Bucket="outputs", Key="probe", Body=b"x")
    with pytest.raises(ClientError, match=r"AccessDenied|403|Forbidden"):
        guarded.client("s3", "nobody").head_object(Bucket="inputs", Key="scene.tif")


def test_an_input_without_access(guarded: GuardedS3, tmp_path: Path, checkpoint: Path) -> None:
    out = tmp_path / "out.tif"
    code, err = guarded.cli("nobody", "predict", guarded.scene_url, out, "--model", checkpoint)
    assert_one_line_error(code, err, 1, f"access denied to {guarded.scene_url}")
    assert not [path for path in tmp_path.iterdir() if path.name.startswith("out")]


@pytest.mark.parametrize("name", ["out.tif", "out.zarr"])
def test_an_output_without_access(guarded: GuardedS3, tmp_path: Path, checkpoint: Path, name: str) -> None:
    scene = write_geotiff(tmp_path / "scene.tif", random_image((3, 80, 90), seed=1))
    out = f"s3://outputs/{name}"
    code, err = guarded.cli("reader", "predict", scene, out, "--model", checkpoint, "--chunk", "64")
    assert_one_line_error(code, err, 1, "s3://outputs/")
    assert "access denied" in err.lower(), err
    assert guarded.keys_in("outputs") == []


def test_an_output_bucket_without_access(guarded: GuardedS3, tmp_path: Path, checkpoint: Path) -> None:
    """A bucket nobody may list is not taken for a missing one."""
    code, err = guarded.cli("nobody", "predict", guarded.scene_url, "s3://outputs/out.tif", "--model", checkpoint)
    assert_one_line_error(code, err, 1)
    assert "access denied" in err.lower() and "does not exist" not in err, err
