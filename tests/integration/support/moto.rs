//! moto's EC2 on 127.0.0.1 (installed by scripts/test), for tests that look instances up with
//! DescribeInstances. Killed on `Drop`.
//!
//! moto invents 10.x addresses that are not on this machine; a test that connects to an
//! instance gives it a loopback address instead ([`Moto::loopback_vpc`]: a VPC 127.0.0.0/16 and
//! subnets of it, so `run_instances(PrivateIpAddress="127.0.0.1")` is accepted) and must never
//! connect to an address moto chose.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::ports::free_port;

/// The region every moto call of the tests uses.
pub const REGION: &str = "us-east-1";

/// The environment of a process that talks to moto only: any credentials do, and never a
/// developer's own profile or an instance role.
pub fn env() -> Vec<(String, String)> {
    vec![
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ("AWS_CONFIG_FILE".into(), "/nonexistent".into()),
        ("AWS_SHARED_CREDENTIALS_FILE".into(), "/nonexistent".into()),
        ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
    ]
}

/// An instance's tags, `(Key, Value)`.
pub type Tags<'a> = &'a [(&'a str, &'a str)];

pub struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    /// Starts moto's server and waits until it answers (another port when one was taken).
    pub fn start() -> Moto {
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("python3")
                .args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("moto (scripts/test installs moto[server])");
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                let answered = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
                    && Command::new("python3")
                        .args([
                            "-c",
                            &format!(
                                "import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/moto-api/')"
                            ),
                        ])
                        .output()
                        .is_ok_and(|output| output.status.success());
                if answered {
                    return Moto { child, port };
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("moto did not start");
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `script` (Python) with `ec2` (a boto3 client for this server) and `ami` (one of its
    /// images); returns its stdout.
    pub fn python(&self, script: &str) -> String {
        let prelude = format!(
            "import boto3\nec2 = boto3.client('ec2', endpoint_url='{}', region_name='{REGION}', aws_access_key_id='testing', aws_secret_access_key='testing')\nami = ec2.describe_images()['Images'][0]['ImageId']\n",
            self.endpoint()
        );
        let output = Command::new("python3")
            .args(["-c", &format!("{prelude}{script}")])
            .output()
            .expect("python3");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates a VPC 127.0.0.0/16 with one subnet per `(zone, "127.0.N.0/24")`, and the
    /// instances `(subnet index, private address, tags)`; returns their IDs in order. Tags given
    /// as `Key=Value` pairs.
    pub fn loopback_vpc(
        &self,
        subnets: &[(&str, &str)],
        instances: &[(usize, &str, Tags<'_>)],
    ) -> Vec<String> {
        let mut script = String::from(
            "vpc = ec2.create_vpc(CidrBlock='127.0.0.0/16')['Vpc']['VpcId']\nsubnets = []\n",
        );
        for (zone, cidr) in subnets {
            script.push_str(&format!(
                "subnets.append(ec2.create_subnet(VpcId=vpc, CidrBlock='{cidr}', AvailabilityZone='{zone}')['Subnet']['SubnetId'])\n"
            ));
        }
        for (subnet, address, tags) in instances {
            let tags: Vec<String> = tags
                .iter()
                .map(|(k, v)| format!("{{'Key': '{k}', 'Value': '{v}'}}"))
                .collect();
            script.push_str(&format!(
                "print(ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, SubnetId=subnets[{subnet}], PrivateIpAddress='{address}', TagSpecifications=[{{'ResourceType': 'instance', 'Tags': [{}]}}])['Instances'][0]['InstanceId'])\n",
                tags.join(", ")
            ));
        }
        self.python(&script).lines().map(str::to_owned).collect()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
