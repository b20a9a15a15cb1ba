//! The data of the container benches: a login-sized container and the same fields as a
//! serde struct, owned and borrowed, and what a handler reads from a container.
#![allow(dead_code)]

use msgi_container::{Container, ContainerRef};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct Login {
    pub(crate) message_type: String,
    pub(crate) source_id: String,
    pub(crate) source_sub_id: String,
    pub(crate) target_id: String,
    pub(crate) target_sub_id: String,
    pub(crate) user: String,
    pub(crate) token: String,
    pub(crate) device: String,
    pub(crate) locale: String,
    pub(crate) timestamp: i64,
    pub(crate) version: u32,
    pub(crate) remember: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct LoginRef<'a> {
    pub(crate) message_type: &'a str,
    pub(crate) source_id: &'a str,
    pub(crate) source_sub_id: &'a str,
    pub(crate) target_id: &'a str,
    pub(crate) target_sub_id: &'a str,
    pub(crate) user: &'a str,
    pub(crate) token: &'a str,
    pub(crate) device: &'a str,
    pub(crate) locale: &'a str,
    pub(crate) timestamp: i64,
    pub(crate) version: u32,
    pub(crate) remember: bool,
}

pub(crate) fn login() -> Login {
    Login {
        message_type: "user_login".into(),
        source_id: "client-7f3a".into(),
        source_sub_id: "".into(),
        target_id: "auth-server".into(),
        target_sub_id: "eu-1".into(),
        user: "alice@example.com".into(),
        token: "c2VjcmV0LXRva2VuLWZvci1hbGljZS0xMjM0NTY3ODkw".into(),
        device: "ios-17.2 iPhone15,3".into(),
        locale: "en-GB".into(),
        timestamp: 1_700_000_000_123,
        version: 42,
        remember: true,
    }
}

pub(crate) fn container(l: &Login) -> Container {
    Container::builder(l.message_type.clone())
        .source(l.source_id.clone(), l.source_sub_id.clone())
        .target(l.target_id.clone(), l.target_sub_id.clone())
        .value("user", l.user.as_str())
        .value("token", l.token.as_str())
        .value("device", l.device.as_str())
        .value("locale", l.locale.as_str())
        .value("timestamp", l.timestamp)
        .value("version", l.version)
        .value("remember", l.remember)
        .build()
        .unwrap()
}

/// What a handler reads from a container: every field, typed.
pub(crate) fn read(c: &Container) -> LoginRef<'_> {
    LoginRef {
        message_type: c.message_type(),
        source_id: c.source_id(),
        source_sub_id: c.source_sub_id(),
        target_id: c.target_id(),
        target_sub_id: c.target_sub_id(),
        user: c.get("user").unwrap(),
        token: c.get("token").unwrap(),
        device: c.get("device").unwrap(),
        locale: c.get("locale").unwrap(),
        timestamp: c.get("timestamp").unwrap(),
        version: c.get("version").unwrap(),
        remember: c.get("remember").unwrap(),
    }
}

/// The same, read in place.
pub(crate) fn read_ref<'a>(c: &ContainerRef<'a>) -> LoginRef<'a> {
    LoginRef {
        message_type: c.message_type(),
        source_id: c.source_id(),
        source_sub_id: c.source_sub_id(),
        target_id: c.target_id(),
        target_sub_id: c.target_sub_id(),
        user: c.get("user").unwrap(),
        token: c.get("token").unwrap(),
        device: c.get("device").unwrap(),
        locale: c.get("locale").unwrap(),
        timestamp: c.get("timestamp").unwrap(),
        version: c.get("version").unwrap(),
        remember: c.get("remember").unwrap(),
    }
}
