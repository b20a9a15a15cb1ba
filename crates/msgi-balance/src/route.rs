//! Routing by frame kind: tower's `Steer` with a table of kinds.

use std::fmt;
use std::sync::Arc;

use msgi::{Frame, Kind};
use tower::steer::{Picker, Steer};

/// Picks a service by the frame's kind: the first route naming it, else
/// the default (the last service).
#[derive(Clone)]
pub struct KindPicker {
    routes: Arc<[(Kind, usize)]>,
    default: usize,
}

impl fmt::Debug for KindPicker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindPicker")
            .field("routes", &self.routes)
            .field("default", &self.default)
            .finish()
    }
}

impl<S> Picker<S, Frame> for KindPicker {
    fn pick(&mut self, frame: &Frame, _services: &[S]) -> usize {
        let kind = frame.kind();
        self.routes
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(self.default, |(_, i)| *i)
    }
}

/// Frames of the kinds of a route go to its service; every other frame to
/// `default`. tower's [`Steer`]: ready when every service is (use shared,
/// buffered services such as [`Balanced`](crate::Balanced), whose
/// readiness is a place in their queue).
pub fn by_kind<S>(routes: Vec<(Vec<Kind>, S)>, default: S) -> Steer<S, KindPicker, Frame> {
    let mut table = Vec::new();
    let mut services = Vec::with_capacity(routes.len() + 1);
    for (i, (kinds, service)) in routes.into_iter().enumerate() {
        table.extend(kinds.into_iter().map(|k| (k, i)));
        services.push(service);
    }
    let default_index = services.len();
    services.push(default);
    Steer::new(
        services,
        KindPicker {
            routes: table.into(),
            default: default_index,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Service, ServiceExt};

    #[tokio::test]
    async fn frames_go_to_their_kind_route_or_the_default() {
        let named = |name: &'static str| {
            tower::service_fn(move |f: Frame| async move {
                Ok::<_, std::convert::Infallible>(Frame::data(format!("{name}:{}", f.kind())))
            })
        };
        let app = Kind::app(0x101).unwrap();
        let mut router = by_kind(
            vec![(vec![app], named("x")), (vec![Kind::CONTROL], named("y"))],
            named("rest"),
        );
        for (kind, want) in [(app, "x"), (Kind::CONTROL, "y"), (Kind::DATA, "rest")] {
            let answer = router
                .ready()
                .await
                .unwrap()
                .call(Frame::new(kind, "p"))
                .await
                .unwrap();
            assert!(answer.payload_text().starts_with(want), "{kind}");
        }
    }
}
