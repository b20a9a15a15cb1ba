//! The data of the container benches: a login-sized container and the same fields as a
//! serde struct, owned and borrowed, and what a handler reads from a container.
#![allow(dead_code)]

use msgi_container::{Container, ContainerRef};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct Login {
    pub message_type: String,
    pub source_id: String,
    pub source_sub_id: String,
    pub target_id: String,
    pub target_sub_id: String,
    pub user: String,
    pub token: String,
    pub device: String,
    pub locale: String,
    pub timestamp: i64,
    pub version: u32,
    pub remember: bool,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct LoginRef<'a> {
    pub message_type: &'a str,
    pub source_id: &'a str,
    pub source_sub_id: &'a str,
    pub target_id: &'a str,
    pub target_sub_id: &'a str,
    pub user: &'a str,
    pub token: &'a str,
    pub device: &'a str,
    pub locale: &'a str,
    pub timestamp: i64,
    pub version: u32,
    pub remember: bool,
}

pub fn login() -> Login {
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

pub fn container(l: &Login) -> Container {
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
pub fn read(c: &Container) -> LoginRef<'_> {
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
pub fn read_ref<'a>(c: &ContainerRef<'a>) -> LoginRef<'a> {
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

