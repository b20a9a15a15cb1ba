//! The layers `msgi serve` and `msgi send` can run, from command-line flags.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use msgi::{wire, FrameCodec, MakeFraming, Wire};
use msgi_middleware::psk::key_from_file_contents;
use msgi_middleware::{
    Deflate, Encrypt, FrameTimeoutLayer, Limit, PresharedKeys, Psk, RateLimitLayer, RatePolicy,
    Sign,
};
use tower::layer::util::{Identity, Stack};
use tower::util::Either;
use tower::ServiceBuilder;

/// Wire transforms; client and server must be given the same ones.
#[derive(clap::Args, Debug, Clone)]
pub(crate) struct WireArgs {
    /// Compress payloads of 1 KiB or more (zlib).
    #[arg(long)]
    compress: bool,
    /// The pre-shared key (32 raw bytes, or 64 hex digits; key id 1): every
    /// connection runs the pre-shared-key handshake, and frames are
    /// encrypted (ChaCha20-Poly1305) under the keys it derives.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Also authenticate every frame with HMAC-SHA256 under the handshake's
    /// keys (needs --key-file).
    #[arg(long, requires = "key_file")]
    hmac: bool,
    /// With --key-file: do not encrypt (authenticate only, with --hmac).
    #[arg(long, requires = "key_file")]
    no_encrypt: bool,
}

/// From the application to the wire: compress, encrypt, sign; each optional.
/// A factory: every connection gets fresh transforms.
pub(crate) type WireStack = Wire<
    FrameCodec,
    wire::Stack<
        wire::Stack<wire::Stack<wire::Identity, Option<Deflate>>, Option<Encrypt>>,
        Option<Sign>,
    >,
>;

/// One connection's framing, made by a [`WireStack`].
pub(crate) type Framing = <WireStack as MakeFraming>::Framing;

impl WireArgs {
    fn encrypts(&self) -> bool {
        self.key_file.is_some() && !self.no_encrypt
    }

    pub(crate) fn framing(&self) -> Result<WireStack> {
        let compress = self.compress.then(Deflate::new);
        let encrypt = self.encrypts().then(Encrypt::new);
        let sign = self.hmac.then(Sign::new);
        Ok(Wire::new(FrameCodec::new())
            .transform(compress)
            .transform(encrypt)
            .transform(sign))
    }

    /// The pre-shared-key handshake, with --key-file: for `framing`'s transforms.
    pub(crate) fn psk(&self) -> Result<Option<Psk>> {
        let Some(path) = &self.key_file else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let Some(key) = key_from_file_contents(&bytes) else {
            bail!("{}: a key is 32 raw bytes or 64 hex digits", path.display());
        };
        Ok(Some(Psk::new(
            PresharedKeys::new(1, &key),
            &self.framing()?,
        )))
    }

    /// True when a pre-shared key (and so the handshake) was asked for.
    pub(crate) fn uses_psk(&self) -> bool {
        self.key_file.is_some()
    }

    /// True when no wire transform was asked for.
    pub(crate) fn is_empty(&self) -> bool {
        !self.compress && self.key_file.is_none()
    }

    /// The same flags, for a child `msgi serve`.
    pub(crate) fn to_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = Vec::new();
        if self.compress {
            args.push("--compress".into());
        }
        if let Some(path) = &self.key_file {
            args.push("--key-file".into());
            args.push(path.into());
        }
        if self.hmac {
            args.push("--hmac".into());
        }
        if self.no_encrypt {
            args.push("--no-encrypt".into());
        }
        args
    }

    pub(crate) fn describe(&self) -> String {
        let mut layers = Vec::new();
        if self.compress {
            layers.push("compression");
        }
        if self.encrypts() {
            layers.push("encryption");
        }
        if self.hmac {
            layers.push("hmac");
        }
        if self.key_file.is_some() {
            layers.push("psk handshake");
        }
        if layers.is_empty() {
            "none".into()
        } else {
            layers.join(" + ")
        }
    }
}

/// The rate-limit policy flag.
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub(crate) enum Policy {
    /// Answer ERROR `rate limited`.
    Reject,
    /// Hold the session back (TCP backpressure).
    Delay,
}

type RequestLayers = ServiceBuilder<
    Stack<Either<RateLimitLayer, Identity>, Stack<Either<FrameTimeoutLayer, Identity>, Identity>>,
>;

/// The per-request layers of `msgi serve`; a rate the layer refuses
/// (zero, NaN, infinite) is a `ConfigError`.
pub(crate) fn request_layers(
    timeout_ms: Option<u64>,
    rate: Option<f64>,
    policy: Policy,
) -> Result<RequestLayers, msgi::ConfigError> {
    let timeout = timeout_ms.map(|ms| FrameTimeoutLayer::new(Duration::from_millis(ms)));
    let policy = match policy {
        Policy::Reject => RatePolicy::Reject,
        Policy::Delay => RatePolicy::Delay,
    };
    let rate = rate
        .map(|n| {
            Ok::<_, msgi::ConfigError>(RateLimitLayer::new(policy).per_session(Limit::frames(n)?))
        })
        .transpose()?;
    Ok(ServiceBuilder::new()
        .option_layer(timeout)
        .option_layer(rate))
}
