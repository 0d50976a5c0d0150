"""What the CloudFormation templates (deploy/aws) come to for each environment's parameters file,
against the spec's known AWS defects and the platform's own rules: subnets of a tier in three
zones, a PostgreSQL version RDS still supports, a cache that fails over and encrypts, CloudTrail's
exact bucket policy, nothing open to the internet but HTTPS on the load balancer, every bucket
and key locked down, node pools matching the Kubernetes overlays, and every cross-stack import
exported by a stack deployed before it.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import re

import pytest

from prognetwork.registry import services
from tests.helpers.aws_templates import (
    ENVIRONMENTS,
    STACK_ORDER,
    imports_of,
    load,
    parameter_file,
    stack,
    sub_text,
)
from tests.helpers.k8s import K8S_DIR, pod_spec

PER_ENVIRONMENT = [name for name in STACK_ORDER if name not in ("github-oidc", "registry")]

# The PostgreSQL versions RDS supports, as AWS's DescribeDBEngineVersions listed them in May 2026
# (cfn-lint 1.58.0's data, which marks 15.12, 16.8, 17.4 and everything older as deprecated).
# Standard support ends: 15 on 2028-02-29, 16 on 2029-02-28, 17 on 2030-02-28, 18 in 2031.
# Refresh this table (and the template's minor) when AWS retires a minor.
RDS_POSTGRES_SUPPORTED = {
    "15": {f"15.{minor}" for minor in range(13, 20)},
    "16": {f"16.{minor}" for minor in range(9, 16)},
    "17": {f"17.{minor}" for minor in range(5, 12)},
    "18": {"18.1", "18.2", "18.3", "18.4", "18.6"},
}
# The spec's snippet.
RETIRED = {"15.3"}

ANYWHERE = {"0.0.0.0/0", "::/0"}


def everywhere(kind: str, environment: str) -> dict[str, dict]:
    """Every resource of `kind` across the per-environment stacks, keyed `stack/resource`."""
    found = {}
    for name in PER_ENVIRONMENT:
        for key, resource in stack(name, environment).of_type(kind).items():
            found[f"{name}/{key}"] = resource
    return found


# --- network: three zones, NAT per zone in production -------------------------------------------

def subnets_by_tier(environment: str) -> dict[str, list[dict]]:
    tiers: dict[str, list[dict]] = {}
    for key, subnet in stack("network", environment).of_type("AWS::EC2::Subnet").items():
        tier = re.match(r"(Public|Private|Isolated)Subnet[A-C]$", key)
        assert tier, f"subnet {key} belongs to no tier"
        tiers.setdefault(tier[1], []).append(subnet["Properties"])
    return tiers


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_each_tier_has_a_subnet_in_each_of_three_zones(environment):
    tiers = subnets_by_tier(environment)
    assert set(tiers) == {"Public", "Private", "Isolated"}
    for tier, subnets in tiers.items():
        zones = [s["AvailabilityZone"] for s in subnets]
        # The spec put both subnets in us-east-1a: a zone is the region's n-th, never a name.
        assert all(z == {"Fn::Select": [z["Fn::Select"][0], {"Fn::GetAZs": ""}]} for z in zones), zones
        assert sorted(z["Fn::Select"][0] for z in zones) == [0, 1, 2], f"{tier} subnets share a zone: {zones}"


def test_subnets_fit_the_vpc_without_overlapping():
    network = stack("network", "production")
    vpc = ipaddress.ip_network(network.properties("Vpc")["CidrBlock"])
    # The overlays trust X-Forwarded-For from the pod network, which is the VPC here.
    assert str(vpc) == "10.0.0.0/16"
    cidrs = [ipaddress.ip_network(s["Properties"]["CidrBlock"]) for s in network.of_type("AWS::EC2::Subnet").values()]
    assert all(c.subnet_of(vpc) for c in cidrs)
    assert not [(a, b) for a, b in itertools.combinations(cidrs, 2) if a.overlaps(b)]


def test_datastores_live_in_the_isolated_subnets_of_three_zones():
    for key in ("DatabaseSubnetGroup", "CacheSubnetGroup"):
        subnets = stack("data", "production").properties(key)["SubnetIds"]
        assert imports_of(subnets) == ["prognetwork-${Environment}-isolated-subnet-ids"], key
    isolated = stack("network", "production").outputs["IsolatedSubnetIds"]["Value"]["Fn::Join"][1]
    assert isolated == [{"Ref": "IsolatedSubnetA"}, {"Ref": "IsolatedSubnetB"}, {"Ref": "IsolatedSubnetC"}]
    # Isolated: no route out of the VPC.
    routes = stack("network", "production").of_type("AWS::EC2::Route").values()
    assert all(r["Properties"]["RouteTableId"] != {"Ref": "IsolatedRouteTable"} for r in routes)


@pytest.mark.parametrize(("environment", "gateways"), [("staging", 1), ("production", 3)])
def test_nat_gateways_one_per_zone_in_production_one_in_staging(environment, gateways):
    network = stack("network", environment)
    nats = network.of_type("AWS::EC2::NatGateway")
    assert len(nats) == gateways
    for zone in "ABC":
        route = network.properties(f"PrivateDefaultRoute{zone}")
        expected = f"NatGateway{zone}" if gateways == 3 else "NatGatewayA"
        assert route["NatGatewayId"] == {"Ref": expected}
        assert network.properties(expected)["SubnetId"] == {"Ref": f"PublicSubnet{expected[-1]}"}


def test_endpoints_and_flow_logs():
    network = stack("network", "staging")
    endpoints = {sub_text(e["Properties"]["ServiceName"]): e["Properties"]
                 for e in network.of_type("AWS::EC2::VPCEndpoint").values()}
    assert set(endpoints) == {f"com.amazonaws.${{AWS::Region}}.{s}" for s in ("s3", "ecr.api", "ecr.dkr", "secretsmanager")}
    assert endpoints["com.amazonaws.${AWS::Region}.s3"]["VpcEndpointType"] == "Gateway"
    (flow_log,) = network.of_type("AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == "ALL"
    assert flow_log["Properties"]["ResourceId"] == {"Ref": "Vpc"}


# --- PostgreSQL ------------------------------------------------------------------------------------

@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_postgres_runs_a_version_rds_supports(environment):
    data = stack("data", environment)
    version = str(data.properties("Database")["EngineVersion"])
    major = version.split(".")[0]
    assert version not in RETIRED
    assert version in RDS_POSTGRES_SUPPORTED.get(major, set()), f"PostgreSQL {version} is not a supported RDS version"
    assert data.properties("DatabaseParameters")["Family"] == f"postgres{major}"
    assert data.properties("Database")["AutoMinorVersionUpgrade"] is True


@pytest.mark.parametrize(("environment", "multi_az", "min_retention"), [("staging", False, 7), ("production", True, 35)])
def test_postgres_is_protected_and_recoverable(environment, multi_az, min_retention):
    data = stack("data", environment)
    db = data.properties("Database")
    assert db["MultiAZ"] is multi_az
    assert db["DeletionProtection"] is True
    assert data.resources["Database"]["DeletionPolicy"] == "Snapshot"
    # Point-in-time recovery is on while automated backups are kept (transaction logs every five
    # minutes: the RPO of a bad change); production keeps the longest window RDS allows.
    assert int(db["BackupRetentionPeriod"]) >= min_retention
    assert db["DeleteAutomatedBackups"] is False
    assert db["PubliclyAccessible"] is False
    assert db["StorageEncrypted"] is True
    assert db["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    assert data.properties("DataKey")["EnableKeyRotation"] is True
    assert data.properties("DatabaseParameters")["Parameters"]["rds.force_ssl"] == "1"
    # The master password lives in Secrets Manager, encrypted with our key, rotated by RDS.
    assert db["ManageMasterUserPassword"] is True and "MasterUserPassword" not in db
    assert db["MasterUserSecret"]["KmsKeyId"] == {"Fn::GetAtt": ["SecretsKey", "Arn"]}
    assert data.properties("SecretsKey")["EnableKeyRotation"] is True
    assert imports_of(db["VPCSecurityGroups"]) == ["prognetwork-${Environment}-postgresql-sg"]


# --- Redis -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_cache_fails_over_across_zones_encrypts_and_requires_its_token(environment):
    data = stack("data", environment)
    cache = data.properties("Cache")
    # MultiAZEnabled needs automatic failover, and failover needs a replica.
    assert cache["AutomaticFailoverEnabled"] is True and cache["MultiAZEnabled"] is True
    assert int(cache["NumCacheClusters"]) >= 2
    assert cache["ClusterMode"] == "Disabled", "NumCacheClusters is a replication group, not cluster mode"
    assert cache["TransitEncryptionEnabled"] is True and cache["TransitEncryptionMode"] == "required"
    assert cache["AtRestEncryptionEnabled"] is True and cache["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    token = sub_text(cache["AuthToken"])
    match = re.fullmatch(r"\{\{resolve:secretsmanager:\$\{(\w+)\}:SecretString:token\}\}", token or "")
    assert match, f"the AUTH token is not a Secrets Manager dynamic reference: {cache['AuthToken']}"
    secret = data.resources[match[1]]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert secret["Properties"]["GenerateSecretString"]["GenerateStringKey"] == "token"
    assert "SecretString" not in secret["Properties"], "a generated token, never one written down"
    assert imports_of(cache["SecurityGroupIds"]) == ["prognetwork-${Environment}-redis-sg"]


# --- security groups -----------------------------------------------------------------------------------

def ingress_rules(environment: str) -> list[tuple[str, dict]]:
    """(group, rule) for every ingress rule, inline or a separate resource."""
    rules = []
    for key, group in everywhere("AWS::EC2::SecurityGroup", environment).items():
        rules += [(key.split("/")[1], rule) for rule in group["Properties"].get("SecurityGroupIngress", [])]
    for rule in everywhere("AWS::EC2::SecurityGroupIngress", environment).values():
        rules.append((rule["Properties"]["GroupId"]["Ref"], rule["Properties"]))
    return rules


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_only_https_on_the_load_balancer_is_open_to_the_internet(environment):
    open_to_all = [(group, rule) for group, rule in ingress_rules(environment)
                   if rule.get("CidrIp") in ANYWHERE or rule.get("CidrIpv6") in ANYWHERE]
    assert open_to_all, "the load balancer must take HTTPS from the internet"
    for group, rule in open_to_all:
        assert group == "LoadBalancerSecurityGroup", f"{group} is open to the internet: {rule}"
        assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", 443, 443), rule


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_datastores_and_the_edge_admit_only_their_tier(environment):
    by_group: dict[str, list[dict]] = {}
    for group, rule in ingress_rules(environment):
        by_group.setdefault(group, []).append(rule)
    service_tier = {"Ref": "ServiceTierSecurityGroup"}
    for group, port in (("DatabaseSecurityGroup", 5432), ("CacheSecurityGroup", 6379)):
        rules = by_group[group]
        assert rules and all(
            (r["IpProtocol"], r["FromPort"], r["ToPort"], r.get("SourceSecurityGroupId")) == ("tcp", port, port, service_tier)
            and "CidrIp" not in r for r in rules
        ), f"{group}: {rules}"
    # The load balancer reaches the service tier on the edge proxy's port only.
    from_lb = [r for r in by_group["ServiceTierSecurityGroup"]
               if r.get("SourceSecurityGroupId") == {"Ref": "LoadBalancerSecurityGroup"}]
    assert len(from_lb) == 1 and from_lb[0]["FromPort"] == from_lb[0]["ToPort"] == 10443
    database_groups = stack("data", environment).properties("Database")["VPCSecurityGroups"]
    assert imports_of(database_groups) == ["prognetwork-${Environment}-postgresql-sg"]


# --- CloudTrail ----------------------------------------------------------------------------------------

def test_trail_bucket_policy_grants_cloudtrail_exactly_what_it_needs():
    audit = stack("audit", "production")
    policy = audit.properties("TrailBucketPolicy")
    assert policy["Bucket"] == {"Ref": "TrailBucket"}
    statements = policy["PolicyDocument"]["Statement"]
    allows = [s for s in statements if s["Effect"] == "Allow"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    trail_arn = "arn:${AWS::Partition}:cloudtrail:${AWS::Region}:${AWS::AccountId}:trail/prognetwork-${Environment}"
    assert [s["Action"] for s in allows] == ["s3:GetBucketAcl", "s3:PutObject"]
    acl_check, write = allows
    for statement in allows:
        assert statement["Principal"] == {"Service": "cloudtrail.amazonaws.com"}
        assert sub_text(statement["Condition"]["StringEquals"]["aws:SourceArn"]) == trail_arn
    assert acl_check["Resource"] == {"Fn::GetAtt": ["TrailBucket", "Arn"]}
    assert sub_text(write["Resource"]) == "${TrailBucket.Arn}/AWSLogs/${AWS::AccountId}/*"
    assert write["Condition"]["StringEquals"]["s3:x-amz-acl"] == "bucket-owner-full-control"
    assert set(write["Condition"]) == {"StringEquals"} and set(acl_check["Condition"]) == {"StringEquals"}
    # The only other statement refuses requests without TLS.
    assert len(denies) == 1 and denies[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    trail = audit.resources["Trail"]
    assert trail["DependsOn"] == "TrailBucketPolicy", "CloudTrail checks the policy when the trail is created"
    props = trail["Properties"]
    assert props["TrailName"] == {"Fn::Sub": "prognetwork-${Environment}"}
    assert props["IsMultiRegionTrail"] is True and props["EnableLogFileValidation"] is True
    assert props["IncludeGlobalServiceEvents"] is True and props["IsLogging"] is True
    assert props["KMSKeyId"] == {"Fn::GetAtt": ["TrailKey", "Arn"]}
    assert props["S3BucketName"] == {"Ref": "TrailBucket"}


# --- buckets and keys ------------------------------------------------------------------------------------

@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_bucket_is_encrypted_versioned_private_tls_only_and_expires(environment):
    buckets = everywhere("AWS::S3::Bucket", environment)
    assert len(buckets) == 6
    policies = {}
    for key, policy in everywhere("AWS::S3::BucketPolicy", environment).items():
        policies[(key.split("/")[0], policy["Properties"]["Bucket"]["Ref"])] = policy["Properties"]["PolicyDocument"]
    for key, bucket in buckets.items():
        props = bucket["Properties"]
        encryption = props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert encryption["SSEAlgorithm"] in {"aws:kms", "AES256"}, key
        assert props["VersioningConfiguration"] == {"Status": "Enabled"}, key
        assert props["PublicAccessBlockConfiguration"] == dict.fromkeys(
            ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"), True), key
        assert props["LifecycleConfiguration"]["Rules"], key
        assert bucket["DeletionPolicy"] == "Retain", key
        stack_name, resource = key.split("/")
        statements = policies[(stack_name, resource)]["Statement"]
        assert any(s["Effect"] == "Deny" and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
                   for s in statements), f"{key} accepts requests without TLS"
        # Only the access-log buckets may use S3-managed keys (server access logging needs it).
        if "AccessLog" not in resource:
            assert encryption["SSEAlgorithm"] == "aws:kms", key


@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_every_key_rotates(environment):
    keys = everywhere("AWS::KMS::Key", environment) | stack("registry").of_type("AWS::KMS::Key")
    assert keys
    assert all(k["Properties"]["EnableKeyRotation"] is True for k in keys.values())


def test_backups_replicate_to_the_replica_stacks_bucket_and_key():
    audit, replica = stack("audit", "production"), stack("backup-replica", "production")
    (rule,) = audit.properties("BackupBucket")["ReplicationConfiguration"]["Rules"]
    destination = rule["Destination"]
    bucket = sub_text(replica.properties("ReplicaBucket")["BucketName"])
    assert sub_text(destination["Bucket"]) == f"arn:${{AWS::Partition}}:s3:::{bucket}"
    alias = sub_text(replica.properties("ReplicaKeyAlias")["AliasName"])
    assert sub_text(destination["EncryptionConfiguration"]["ReplicaKmsKeyID"]).endswith(f":{alias}")
    assert rule["Status"] == "Enabled" and rule["DeleteMarkerReplication"] == {"Status": "Disabled"}
    assert audit.parameters["ReplicaRegion"] != "us-east-1", "the replica must be in another region"


# --- registry --------------------------------------------------------------------------------------------

def test_a_repository_per_service_with_immutable_scanned_images():
    registry = stack("registry")
    repositories = {r["Properties"]["RepositoryName"]: r["Properties"]
                    for r in registry.of_type("AWS::ECR::Repository").values()}
    assert set(repositories) == {f"prognetwork/{name}" for name in services()}
    overlay = (K8S_DIR / "overlays" / "production" / "kustomization.yaml").read_text()
    for name, repository in repositories.items():
        assert f".amazonaws.com/{name}\n" in overlay, f"the production overlay does not pull {name}"
        assert repository["ImageTagMutability"] == "IMMUTABLE"
        assert repository["ImageScanningConfiguration"] == {"ScanOnPush": True}
        assert "LifecyclePolicyText" in repository["LifecyclePolicy"]


# --- compute: node pools, IRSA, deploy role ---------------------------------------------------------------

@pytest.mark.parametrize("environment", ENVIRONMENTS)
def test_node_pools_general_memory_cpu_on_demand_and_spot(environment):
    compute = stack("compute", environment)
    groups = {g["Properties"]["NodegroupName"]: g["Properties"] for g in compute.of_type("AWS::EKS::Nodegroup").values()}
    assert set(groups) == {"general", "memory-optimized", "cpu-optimized", "spot"}
    for name, group in groups.items():
        assert group["CapacityType"] == ("SPOT" if name == "spot" else "ON_DEMAND"), name
        assert group["Labels"]["node-type"] == name
        assert imports_of(group["Subnets"]) == ["prognetwork-${Environment}-private-subnet-ids"]
    assert len(groups["spot"]["InstanceTypes"]) >= 3, "one spot instance type is one reclaim away from none"
    assert "Taints" not in groups["general"], "the general pool takes every workload"
    general = groups["general"]["ScalingConfig"]
    assert general["MinSize"] >= (3 if environment == "production" else 2)


def test_spot_nodes_are_what_the_production_overlay_tolerates_and_prefers(k8s_render):
    (spot,) = [g["Properties"] for g in stack("compute", "production").of_type("AWS::EKS::Nodegroup").values()
               if g["Properties"]["CapacityType"] == "SPOT"]
    (taint,) = spot["Taints"]
    effects = {"NO_SCHEDULE": "NoSchedule", "NO_EXECUTE": "NoExecute", "PREFER_NO_SCHEDULE": "PreferNoSchedule"}
    pods = [pod_spec(o["spec"]["jobTemplate"]) if o["kind"] == "CronJob" else pod_spec(o)
            for o in k8s_render("overlays/production") if o["kind"] in {"Deployment", "Rollout", "CronJob", "Job"}]
    on_spot = [p for p in pods if any(t.get("key") == taint["Key"] for t in p.get("tolerations", []))]
    assert on_spot, "no workload of the production overlay runs on spot nodes"
    for pod in on_spot:
        assert {"key": taint["Key"], "operator": "Equal", "value": taint["Value"],
                "effect": effects[taint["Effect"]]} in pod["tolerations"]
        preferred = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        expressions = [e for term in preferred for e in term["preference"]["matchExpressions"]]
        assert any(e["key"] in spot["Labels"] and spot["Labels"][e["key"]] in e["values"] for e in expressions)


def trust_subject(role: dict) -> str:
    """The `…:sub` a role's web-identity trust policy requires (IRSA roles spell it in a !Sub'd JSON)."""
    document = role["Properties"]["AssumeRolePolicyDocument"]
    text = sub_text(document)
    if text is not None:
        document = json.loads(text)  # its ${…} are inside strings
    (statement,) = document["Statement"]
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    (subject,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":sub")]
    (audience,) = [v for k, v in statement["Condition"]["StringEquals"].items() if k.endswith(":aud")]
    assert audience == "sts.amazonaws.com"
    return sub_text(subject) or ""


IRSA = [("ExternalSecretsRole", "ExternalSecretsServiceAccount"), ("BackupRole", "BackupServiceAccount"),
        ("EventArchiveRole", "EventArchiveServiceAccount")]


@pytest.mark.parametrize("environment", ENVIRONMENTS)
@pytest.mark.parametrize(("role_key", "account_parameter"), IRSA, ids=[r for r, _ in IRSA])
def test_irsa_roles_are_the_ones_the_overlays_service_accounts_name(environment, role_key, account_parameter, k8s_render):
    compute = stack("compute", environment)
    role = compute.resources[role_key]
    account = compute.parameters[account_parameter]
    assert trust_subject(role) == f"system:serviceaccount:prog-${{Environment}}:${{{account_parameter}}}"
    role_name = sub_text(role["Properties"]["RoleName"]).replace("${Environment}", environment)
    (service_account,) = [o for o in k8s_render(f"overlays/{environment}")
                          if o["kind"] == "ServiceAccount" and o["metadata"]["name"] == account]
    assert service_account["metadata"]["namespace"] == f"prog-{environment}"
    annotation = service_account["metadata"].get("annotations", {}).get("eks.amazonaws.com/role-arn", "")
    assert annotation.endswith(f":role/{role_name}"), f"{account} assumes {annotation!r}, the stack makes {role_name}"


def test_external_secrets_role_reads_only_its_environments_secret():
    role = stack("compute", "production").resources["ExternalSecretsRole"]
    (policy,) = role["Properties"]["Policies"]
    read, decrypt = policy["PolicyDocument"]["Statement"]
    assert read["Action"] == ["secretsmanager:GetSecretValue", "secretsmanager:DescribeSecret"]
    # prognetwork/<environment>/app alone: staging's role cannot read production's secret.
    assert sub_text(read["Resource"]).endswith(":secret:prognetwork/${Environment}/app-??????")
    assert decrypt["Action"] == "kms:Decrypt"
    assert imports_of(decrypt["Resource"]) == ["prognetwork-${Environment}-secrets-key-arn"]


@pytest.mark.parametrize(("role_key", "bucket"), [("BackupRole", "backup-bucket-arn"),
                                                 ("EventArchiveRole", "event-archive-bucket-arn")])
def test_job_roles_reach_only_their_bucket_and_its_key(role_key, bucket):
    role = stack("compute", "production").resources[role_key]
    (policy,) = role["Properties"]["Policies"]
    imported = imports_of(policy)
    assert set(imported) == {f"prognetwork-${{Environment}}-{bucket}", "prognetwork-${Environment}-backup-key-arn"}
    statements = policy["PolicyDocument"]["Statement"]
    assert "*" not in str([s["Resource"] for s in statements]).replace("/*", "")


def test_deploy_roles_trust_only_their_github_environment_and_main():
    deploy = stack("compute", "production").resources["DeployRole"]
    assert trust_subject(deploy) == "repo:${GitHubRepository}:environment:${Environment}"
    publisher = stack("registry").resources["ImagePublisherRole"]
    assert trust_subject(publisher) == "repo:${GitHubRepository}:ref:refs/heads/main"
    for role in (deploy, publisher):
        (statement,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert statement["Condition"]["StringEquals"]["token.actions.githubusercontent.com:aud"] == "sts.amazonaws.com"


def test_cluster_encrypts_secrets_and_logs_the_control_plane():
    cluster = stack("compute", "production").properties("Cluster")
    assert cluster["EncryptionConfig"][0]["Resources"] == ["secrets"]
    logged = {t["Type"] for t in cluster["Logging"]["ClusterLogging"]["EnabledTypes"]}
    assert logged == {"api", "audit", "authenticator", "controllerManager", "scheduler"}
    assert cluster["AccessConfig"] == {"AuthenticationMode": "API", "BootstrapClusterCreatorAdminPermissions": False}


# --- stacks fit together ------------------------------------------------------------------------------------

def exports_of(name: str) -> set[str]:
    return {sub_text(o["Export"]["Name"]) or "" for o in load(name).get("Outputs", {}).values() if "Export" in o}


def test_every_import_is_exported_by_a_stack_deployed_before():
    for position, name in enumerate(STACK_ORDER):
        earlier = set().union(*(exports_of(n) for n in STACK_ORDER[:position]))
        missing = set(imports_of(load(name)["Resources"])) - earlier
        assert not missing, f"{name}.yaml imports what no earlier stack exports: {missing}"


def test_parameters_files_name_only_parameters_some_template_declares():
    declared = set().union(*(load(name).get("Parameters", {}).keys() for name in STACK_ORDER))
    for environment in (*ENVIRONMENTS, "registry"):
        unknown = set(parameter_file(environment)) - declared
        assert not unknown, f"parameters/{environment}.json: no template declares {unknown}"
