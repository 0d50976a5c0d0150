"""The network and security stacks deployed, in order, to moto's CloudFormation (its server mode),
with each environment's parameters file: the second stack finds the first's exports, the
subnets land in three different zones of the region, production gets three NAT gateways and
staging one, and the datastores' security groups admit only the service tier.

moto runs what it knows of CloudFormation; the other stacks use resources it does not deploy
(RDS with a managed password, ElastiCache, EKS, CloudTrail), which test_aws.py and
test_aws_policies.py check instead.
"""

from __future__ import annotations

from pathlib import Path

from tests.helpers.aws_templates import AWS_DIR, load, parameter_file
from tests.helpers.moto_server import moto_server


def deploy(cloudformation, name: str, environment: str) -> dict:
    template = load(name)
    values = parameter_file(environment)
    parameters = [{"ParameterKey": k, "ParameterValue": v} for k, v in values.items() if k in template["Parameters"]]
    stack_name = f"prognetwork-{environment}-{name}"
    cloudformation.create_stack(StackName=stack_name, TemplateBody=Path(AWS_DIR / f"{name}.yaml").read_text(),
                                Parameters=parameters, Capabilities=["CAPABILITY_IAM"])
    (stack,) = cloudformation.describe_stacks(StackName=stack_name)["Stacks"]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_network_and_security_deploy_in_order_for_both_environments():
    """Both environments side by side on one server: their exports are named apart."""
    with moto_server() as aws:
        # The region the stacks deploy to (the overlays' registry and secret store are there).
        cloudformation, ec2 = aws.client("cloudformation", "us-east-1"), aws.client("ec2", "us-east-1")
        zones = {z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]}
        for environment, nat_gateways in (("staging", 1), ("production", 3)):
            network = deploy(cloudformation, "network", environment)
            security = deploy(cloudformation, "security", environment)
            in_vpc = [{"Name": "vpc-id", "Values": [network["VpcId"]]}]

            for tier in ("Public", "Private", "Isolated"):
                subnets = ec2.describe_subnets(SubnetIds=network[f"{tier}SubnetIds"].split(","))["Subnets"]
                placed = {s["AvailabilityZone"] for s in subnets}
                assert len(subnets) == 3 and len(placed) == 3 and placed <= zones, f"{environment} {tier}: {placed}"
                assert {s["VpcId"] for s in subnets} == {network["VpcId"]}
            assert len(ec2.describe_nat_gateways(Filters=in_vpc)["NatGateways"]) == nat_gateways, environment

            groups = {g["GroupId"]: g for g in ec2.describe_security_groups(Filters=in_vpc)["SecurityGroups"]}
            service_tier = security["ServiceTierSecurityGroupId"]
            for output, port in (("DatabaseSecurityGroupId", 5432), ("CacheSecurityGroupId", 6379)):
                (rule,) = groups[security[output]]["IpPermissions"]
                assert (rule["FromPort"], rule["ToPort"], rule["IpRanges"]) == (port, port, [])
                assert [pair["GroupId"] for pair in rule["UserIdGroupPairs"]] == [service_tier]
            open_to_all = [(g["GroupId"], r.get("FromPort")) for g in groups.values() for r in g["IpPermissions"]
                           if any(ip["CidrIp"] == "0.0.0.0/0" for ip in r.get("IpRanges", []))]
            assert open_to_all == [(security["LoadBalancerSecurityGroupId"], 443)], open_to_all
