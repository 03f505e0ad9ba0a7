//! The descriptors keep their annotations, and every method answers as the crate's `//!` says,
//! through a real tonic client over a socket.

use std::time::Duration;

use prost::Message as _;
use prost_reflect::{DescriptorPool, Value};
use tonic::Code;

use super::pb::shop::v1 as shop;
use super::pb::shop::v1::extra_client::ExtraClient;
use super::pb::shop::v1::legacy_client::LegacyClient;
use super::pb::shop::v1::shop_client::ShopClient;
use super::*;

fn http_rule(pool: &DescriptorPool, method: &str) -> prost_reflect::DynamicMessage {
    let ext = pool
        .get_extension_by_name("google.api.http")
        .expect("the google.api.http extension");
    let (svc, name) = method.rsplit_once('.').expect("service.method");
    let svc = pool.get_service_by_name(svc).expect("service");
    let m = svc.methods().find(|m| m.name() == name).expect("method");
    let opts = m.options();
    assert!(
        opts.has_extension(&ext),
        "{method} lost its google.api.http"
    );
    match opts.get_extension(&ext).into_owned() {
        Value::Message(rule) => rule,
        other => panic!("not a message: {other:?}"),
    }
}

#[test]
fn both_descriptor_sets_keep_the_http_annotations() {
    for set in [DESCRIPTORS_SHOP, DESCRIPTORS_ALL] {
        let pool = DescriptorPool::decode(set).expect("decodes");
        let rule = http_rule(&pool, "shop.v1.Shop.GetItem");
        assert_eq!(
            rule.get_field_by_name("get").unwrap().as_str(),
            Some("/v1/shelves/{shelf}/items/{id}")
        );
        let extra = rule.get_field_by_name("additional_bindings").unwrap();
        let extra = extra.as_list().unwrap();
        assert_eq!(extra.len(), 1);
        let rule = http_rule(&pool, "shop.v1.Shop.SearchItems");
        assert_eq!(
            rule.get_field_by_name("response_body").unwrap().as_str(),
            Some("items")
        );
        assert!(pool
            .get_file_by_name("google/protobuf/timestamp.proto")
            .is_some());
        assert!(pool.get_service_by_name("shop.v1.Legacy").is_some());
    }
    let all = DescriptorPool::decode(DESCRIPTORS_ALL).unwrap();
    let rule = http_rule(&all, "shop.v1.Extra.Hello");
    assert_eq!(
        rule.get_field_by_name("get").unwrap().as_str(),
        Some("/v1/hello/{name}")
    );
    let shop_only = DescriptorPool::decode(DESCRIPTORS_SHOP).unwrap();
    assert!(shop_only.get_service_by_name("shop.v1.Extra").is_none());
    assert!(shop_only.get_file_by_name("shop/v1/extra.proto").is_none());
}

#[test]
fn descriptor_sets_list_every_file_after_its_imports() {
    for set in [DESCRIPTORS_SHOP, DESCRIPTORS_ALL] {
        let fds = prost_types::FileDescriptorSet::decode(set).unwrap();
        let mut seen = std::collections::HashSet::new();
        for f in &fds.file {
            for d in &f.dependency {
                assert!(seen.contains(d.as_str()), "{:?} before {d}", f.name);
            }
            seen.insert(f.name().to_string());
        }
    }
}

#[test]
fn grpc_timeout_units() {
    let h = |v: &str| {
        let mut m = HeaderMap::new();
        m.insert("grpc-timeout", v.parse().unwrap());
        grpc_timeout(&m)
    };
    assert_eq!(h("50m"), Some(Duration::from_millis(50)));
    assert_eq!(h("2S"), Some(Duration::from_secs(2)));
    assert_eq!(h("1H"), Some(Duration::from_secs(3600)));
    assert_eq!(h("7u"), Some(Duration::from_micros(7)));
    assert_eq!(h("123456789m"), None, "more than 8 digits");
    assert_eq!(h("5x"), None);
    assert_eq!(h("m"), None);
    assert_eq!(h("-5m"), None);
}

async fn start(opts: Options) -> (Handle, tonic::transport::Channel) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let handle = serve_with(listener, opts).await;
    let channel = tonic::transport::Endpoint::from_shared(handle.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (handle, channel)
}

#[tokio::test]
async fn unary_methods_answer_as_documented() {
    let (h, ch) = start(Options::default()).await;
    let mut c = ShopClient::new(ch.clone());

    let got = c
        .get_item(shop::GetItemRequest {
            shelf: "s1".into(),
            id: 7,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got, item(7, "s1"));
    assert_eq!(got.name, "item-7");
    assert_eq!(got.price.as_ref().unwrap().units, 700);
    assert_eq!(got.created.as_ref().unwrap().seconds, 1_700_000_000);

    let err = c
        .get_item(shop::GetItemRequest {
            shelf: "s1".into(),
            id: 404,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no item 404");
    assert_eq!(h.calls("GetItem"), 2);

    let created = c
        .create_item(shop::CreateItemRequest {
            shelf: "s2".into(),
            item: Some(shop::Item {
                name: "pen".into(),
                ..Default::default()
            }),
            request_id: "r1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.name.as_str(), created.shelf.as_str()),
        ("pen#r1", "s2")
    );

    let updated = c
        .update_item(shop::UpdateItemRequest {
            item: Some(item(3, "x")),
            mask: Some(prost_types::FieldMask {
                paths: vec!["name".into(), "price.units".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(updated.name, "name,price.units");
    assert_eq!(updated.id, 3);

    let found = c
        .search_items(shop::SearchItemsRequest {
            query: "q".into(),
            limit: 5,
            filter: Some(shop::search_items_request::Filter {
                min_units: 300,
                kind: shop::Kind::Book as i32,
                tags: vec!["b".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = found.items.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["q-3", "q-4", "q-5"]);
    assert_eq!(found.total, 3);
    let none = c
        .search_items(shop::SearchItemsRequest {
            query: "q".into(),
            limit: 0,
            filter: Some(shop::search_items_request::Filter {
                tags: vec!["c".into()],
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(none.total, 0);
    let default = c
        .search_items(shop::SearchItemsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default.total, 3);

    let file = c
        .get_file(shop::GetFileRequest {
            path: "a/b.txt".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(file.content, b"a/b.txt");

    let wk = shop::WellKnown {
        big: i64::MAX,
        huge: u64::MAX,
        blob: vec![0, 1, 255],
        note: Some("n".into()),
        took: Some(prost_types::Duration {
            seconds: 3,
            nanos: 1,
        }),
        ..Default::default()
    };
    assert_eq!(c.echo(wk.clone()).await.unwrap().into_inner(), wk);

    let slow = c
        .slow(shop::SlowRequest { ms: 1 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(slow.slept_ms, 1);

    let ping = LegacyClient::new(ch.clone())
        .ping(shop::PingRequest {
            msg: "ab".into(),
            times: 3,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ping.msg.as_str(), ping.at_unix), ("ababab", 1_700_000_000));
    let once = LegacyClient::new(ch.clone())
        .ping(shop::PingRequest {
            msg: "ab".into(),
            times: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(once.msg, "ab");

    let hello = ExtraClient::new(ch)
        .hello(shop::HelloRequest { name: "bo".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hello.greeting, "hello bo");
}

#[tokio::test]
async fn fail_attaches_a_rich_status_when_asked() {
    let (_h, ch) = start(Options::default()).await;
    let mut c = ShopClient::new(ch);
    let plain = c
        .fail(shop::FailRequest {
            code: 9,
            message: "nope".into(),
            with_details: false,
        })
        .await
        .unwrap_err();
    assert_eq!(plain.code(), Code::FailedPrecondition);
    assert_eq!(plain.message(), "nope");
    assert!(plain.details().is_empty());

    let rich = c
        .fail(shop::FailRequest {
            code: 3,
            message: "bad".into(),
            with_details: true,
        })
        .await
        .unwrap_err();
    assert_eq!(rich.code(), Code::InvalidArgument);
    let status = pb::google::rpc::Status::decode(rich.details()).unwrap();
    assert_eq!((status.code, status.message.as_str()), (3, "bad"));
    assert_eq!(status.details.len(), 1);
    assert_eq!(
        status.details[0].type_url,
        "type.googleapis.com/shop.v1.FailureDetail"
    );
    let detail = shop::FailureDetail::decode(status.details[0].value.as_slice()).unwrap();
    assert_eq!(
        (detail.reason.as_str(), detail.field.as_str()),
        ("because", "code")
    );

    c.fail(shop::FailRequest::default()).await.unwrap();
}

#[tokio::test]
async fn an_expired_grpc_timeout_is_deadline_exceeded_and_headers_are_recorded() {
    let (h, _) = start(Options::default()).await;
    // Not a Channel: tonic's Channel runs its own grpc-timeout timer (CANCELLED "Timeout
    // expired") and would answer first. hyper's client sends the header and waits.
    let hyper = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<tonic::body::Body>();
    let mut c = ShopClient::with_origin(hyper, h.url().parse().unwrap());
    let mut req = tonic::Request::new(shop::SlowRequest { ms: 30_000 });
    req.metadata_mut()
        .insert("grpc-timeout", "20m".parse().unwrap());
    req.metadata_mut().insert("x-tenant", "t1".parse().unwrap());
    let err = c.slow(req).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    assert_eq!(h.calls("Slow"), 1);
    assert_eq!(h.last_method().as_deref(), Some("Slow"));
    let md = h.last_metadata().unwrap();
    assert_eq!(md.get("grpc-timeout").unwrap(), "20m");
    assert_eq!(md.get("x-tenant").unwrap(), "t1");
    assert_eq!(md.get("te").unwrap(), "trailers");
    assert_eq!(md.get("content-type").unwrap(), "application/grpc");
}

#[tokio::test]
async fn watch_holds_until_released_and_ends_with_the_asked_status() {
    let (h, ch) = start(Options::default()).await;
    let mut c = ShopClient::new(ch);
    let mut stream = c
        .watch_items(shop::WatchItemsRequest {
            shelf: "w".into(),
            count: 3,
            hold: true,
            fail_code: 14,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!((first.id, first.shelf.as_str()), (1, "w"));
    // Held: nothing more comes until a release (a pass here can only hide a bug, not invent one).
    assert!(
        tokio::time::timeout(Duration::from_millis(100), stream.message())
            .await
            .is_err(),
        "the second message was not held"
    );
    h.release(2);
    assert_eq!(stream.message().await.unwrap().unwrap().id, 2);
    assert_eq!(stream.message().await.unwrap().unwrap().id, 3);
    let end = stream.message().await.unwrap_err();
    assert_eq!(end.code(), Code::Unavailable);
    assert_eq!(end.message(), "watch failed");

    let mut free = c
        .watch_items(shop::WatchItemsRequest {
            shelf: "w".into(),
            count: 2,
            hold: false,
            fail_code: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(free.message().await.unwrap().unwrap().id, 1);
    assert_eq!(free.message().await.unwrap().unwrap().id, 2);
    assert!(free.message().await.unwrap().is_none());
}

#[tokio::test]
async fn upload_counts_sums_and_names() {
    let (_h, ch) = start(Options::default()).await;
    let mut c = ShopClient::new(ch);
    let items = vec![item(1, ""), item(2, ""), item(5, "")];
    let sum = c
        .upload_items(tokio_stream::iter(items))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sum.count, 3);
    assert_eq!(sum.total_units, 800);
    assert_eq!(sum.names, ["item-1", "item-2", "item-5"]);
}

#[tokio::test]
async fn options_leave_services_out_and_shutdown_closes_the_listener() {
    let (h, ch) = start(Options {
        extra: false,
        reflection: Reflection::Off,
        ..Options::default()
    })
    .await;
    let err = ExtraClient::new(ch.clone())
        .hello(shop::HelloRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(h.calls("Hello"), 1);
    ShopClient::new(ch)
        .get_item(shop::GetItemRequest::default())
        .await
        .unwrap();
    let addr = h.addr();
    h.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
