//! A control plane on port-0 listeners in a temporary directory, for black-box tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use tokenrouter_control_plane::config::{AdminToken, MasterKey};
use tokenrouter_control_plane::server::{self, Secrets};
use tokenrouter_control_plane::store::SqliteStore;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const TOKEN: &str = "test-admin-token";

pub struct TestServer {
    pub grpc: SocketAddr,
    pub rest: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db?mode=rwc", dir.path().display());
        let store = SqliteStore::open(&url).await.unwrap();
        let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let rest = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (grpc_addr, rest_addr) = (grpc.local_addr().unwrap(), rest.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let secrets = Secrets {
            admin_token: AdminToken::given(TOKEN).unwrap(),
            master_key: MasterKey([5; 32]),
        };
        let task = tokio::spawn(server::run(grpc, rest, Arc::new(store), secrets, async {
            let _ = stopped.await;
        }));
        TestServer {
            grpc: grpc_addr,
            rest: rest_addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Stops the server and checks it stopped cleanly and promptly.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(std::time::Duration::from_secs(5), task)
                .await
                .expect("server did not stop")
                .unwrap();
            result.unwrap();
        }
    }

    /// A plain HTTP/1.1 request to the REST listener; returns (status, body).
    pub async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.rest).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.unwrap();
        let status = raw[9..12].parse().unwrap();
        let body = raw
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }
}
