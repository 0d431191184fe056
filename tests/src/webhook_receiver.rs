//! A webhook endpoint for tests: a minimal HTTP/1.1 server on loopback that records every
//! POST (headers and body) and answers with scripted statuses (200 once the script is
//! used up), or holds requests unanswered while told to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Largest request body accepted (events are small).
const MAX_BODY: usize = 1 << 20;

/// One POST received.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Header fields, names in lowercase.
    pub headers: Vec<(String, String)>,
    /// The body, as sent.
    pub body: Vec<u8>,
    /// The status it was answered with (0: held, never answered).
    pub status: u16,
}

impl Delivery {
    /// The first header named `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a webhook body is JSON")
    }
}

#[derive(Default)]
struct Script {
    statuses: VecDeque<u16>,
    hold: bool,
}

/// The receiver; stops when dropped.
pub struct WebhookReceiver {
    /// Its URL (`http://127.0.0.1:<port>/hooks`).
    pub url: String,
    script: Arc<Mutex<Script>>,
    deliveries: mpsc::UnboundedReceiver<Delivery>,
    task: tokio::task::JoinHandle<()>,
}

impl WebhookReceiver {
    /// Start listening on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding the webhook receiver");
        let url = format!("http://{}/hooks", listener.local_addr().expect("local address"));
        let script = Arc::new(Mutex::new(Script::default()));
        let (tx, deliveries) = mpsc::unbounded_channel();
        let s = script.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, s.clone(), tx.clone()));
            }
        });
        Self { url, script, deliveries, task }
    }

    /// Answer the next requests with these statuses, in order (then 200 again).
    pub fn answer_next(&self, statuses: &[u16]) {
        self.script.lock().unwrap_or_else(|e| e.into_inner()).statuses.extend(statuses);
    }

    /// Record requests but never answer them while `hold` (a hung endpoint).
    pub fn hold(&self, hold: bool) {
        self.script.lock().unwrap_or_else(|e| e.into_inner()).hold = hold;
    }

    /// The next request received.
    pub async fn next(&mut self) -> Delivery {
        self.deliveries.recv().await.expect("the receiver runs")
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(conn: tokio::net::TcpStream, script: Arc<Mutex<Script>>, tx: mpsc::UnboundedSender<Delivery>) {
    let (read, mut write) = conn.into_split();
    let mut read = BufReader::new(read);
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if read.read_line(&mut h).await.unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((name, value)) = h.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let len = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse::<usize>().ok())
            .unwrap_or(0)
            .min(MAX_BODY);
        let mut body = vec![0; len];
        if read.read_exact(&mut body).await.is_err() {
            return;
        }
        let (status, hold) = {
            let mut s = script.lock().unwrap_or_else(|e| e.into_inner());
            if s.hold {
                (0, true)
            } else {
                (s.statuses.pop_front().unwrap_or(200), false)
            }
        };
        let _ = tx.send(Delivery { headers, body, status });
        if hold {
            // Keep the connection open, unanswered, until the client gives up.
            let mut rest = Vec::new();
            let _ = read.read_to_end(&mut rest).await;
            return;
        }
        let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
        if write.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
