//! Shared support for keyhole's integration tests: throwaway servers that the tests start
//! themselves on 127.0.0.1 and kill on `Drop`. Nothing here is compiled into keyhole itself, and
//! nothing here may talk to any address other than loopback.
//!
//! The one integration-test binary (`tests/integration/main.rs`) includes this as `mod support;`;
//! each test file reaches it as `crate::support`.

// With every feature on, every test is compiled and every helper here has a user: a helper left
// without one is a warning. Without `ec2` or `gssapi`, the tests of those features are left out
// and the helpers only they use (moto, the KDC) would warn.
#![cfg_attr(not(all(feature = "ec2", feature = "gssapi")), allow(dead_code))]

pub mod dns;
pub mod fault_proxy;
pub mod homes;
pub mod imds;
pub mod keyhole;
pub mod ldap_relay;
pub mod moto;
pub mod mute;
pub mod ports;
pub mod s3;
pub mod samba;
pub mod sshd;
pub mod stack;
