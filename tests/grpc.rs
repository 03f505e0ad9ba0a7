//! gRPC through the gateway: a real tonic server behind an `h2c` upstream and a real tonic client
//! in front, unary and server-streaming calls, `grpc-status` trailers included.
#![allow(clippy::unwrap_used)]

mod common;

use common::{config, gateway};
use tokio_stream::StreamExt;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A gateway with an h2c upstream at `upstream` for the health service, and a gRPC client to it.
async fn through_gateway(
    upstream: std::net::SocketAddr,
) -> (common::TestGateway, HealthClient<tonic::transport::Channel>) {
    let gw = gateway(&config(&format!(
        r#"
upstreams:
  grpc:
    targets: [{{ url: "http://{upstream}" }}]
    protocol: h2c
routes:
  - {{ name: grpc, match: {{ paths: ["/grpc.health.v1.Health"] }}, upstream: grpc }}
"#
    )))
    .await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", gw.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    (gw, HealthClient::new(channel))
}

#[tokio::test]
async fn unary_and_streaming_grpc_calls_pass_unchanged_with_their_trailers() {
    let (reporter, upstream) = common::health_upstream().await;
    let (_gw, mut client) = through_gateway(upstream).await;

    // Unary: the status arrives in the trailers; without them tonic reports an error.
    let resp = client
        .check(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .unwrap();
    assert_eq!(resp.get_ref().status, ServingStatus::Serving as i32);

    // A gRPC error (trailers-only response) keeps its code and message.
    let err = client
        .check(HealthCheckRequest {
            service: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Server streaming: updates arrive one by one while the stream stays open.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "orders".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::NotServing)
        .await;
    let second = tokio::time::timeout(std::time::Duration::from_secs(5), stream.next())
        .await
        .expect("the update is streamed through at once")
        .unwrap()
        .unwrap();
    assert_eq!(second.status, ServingStatus::NotServing as i32);

    // Many calls multiplex over the gateway's HTTP/2 connections.
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut c = client.clone();
        calls.push(tokio::spawn(async move {
            c.check(HealthCheckRequest {
                service: "orders".into(),
            })
            .await
            .map(|r| r.into_inner().status)
        }));
    }
    for call in calls {
        assert_eq!(
            call.await.unwrap().unwrap(),
            ServingStatus::NotServing as i32
        );
    }
}

#[tokio::test]
async fn gateway_errors_reach_grpc_clients_as_grpc_statuses() {
    let dead = common::closed_port().await;
    let (_gw, mut client) = through_gateway(dead).await;
    let err = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err:?}");
    assert_eq!(err.message(), "the upstream could not be reached");
}
