//! Which node each `media-room` member connects to: senders round robin over the `--node`s
//! (or `--url`), receivers round robin over the `--receiver-node`s, or over the senders'
//! nodes without any. So `--node A --node B` puts a meeting's 8 senders and 8 receivers 4 + 4
//! on each node, and `--node A --receiver-node B` a webinar's senders on A, its audience on B.
//! Nodes are told apart by URL.

use serde_json::json;

/// Every member's node.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The nodes' URLs, in the order first used (senders first).
    pub nodes: Vec<String>,
    /// Member (senders first, then receivers) → index in `nodes`.
    pub node_of: Vec<usize>,
    n_senders: usize,
}

impl Placement {
    /// `n_senders` senders over `sender_urls`, `n_receivers` receivers over `receiver_urls`
    /// (empty: the senders').
    pub fn new(sender_urls: &[String], receiver_urls: &[String], n_senders: usize, n_receivers: usize) -> Self {
        let receiver_urls = if receiver_urls.is_empty() { sender_urls } else { receiver_urls };
        let (mut nodes, mut node_of) = (Vec::<String>::new(), Vec::with_capacity(n_senders + n_receivers));
        let members = (0..n_senders)
            .map(|s| &sender_urls[s % sender_urls.len()])
            .chain((0..n_receivers).map(|r| &receiver_urls[r % receiver_urls.len()]));
        for url in members {
            let k = nodes.iter().position(|n| n == url).unwrap_or_else(|| {
                nodes.push(url.clone());
                nodes.len() - 1
            });
            node_of.push(k);
        }
        Self { nodes, node_of, n_senders }
    }

    /// Member `i`'s URL.
    pub fn url(&self, i: usize) -> &str {
        &self.nodes[self.node_of[i]]
    }

    /// Whether members `a` and `b` are on the same node.
    pub fn same_node(&self, a: usize, b: usize) -> bool {
        self.node_of[a] == self.node_of[b]
    }

    /// Senders and receivers per node, for the report.
    pub fn json(&self) -> serde_json::Value {
        let count = |k: usize, senders: bool| {
            self.node_of.iter().enumerate().filter(|&(i, &n)| n == k && (i < self.n_senders) == senders).count()
        };
        self.nodes
            .iter()
            .enumerate()
            .map(|(k, url)| json!({"node": url, "senders": count(k, true), "receivers": count(k, false)}))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::Placement;

    fn urls(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_meeting_over_two_nodes_puts_half_of_each_role_on_each() {
        let p = Placement::new(&urls(&["a", "b"]), &[], 8, 8);
        let v = p.json();
        assert_eq!(v[0]["senders"], 4);
        assert_eq!(v[0]["receivers"], 4);
        assert_eq!(v[1]["senders"], 4);
        assert_eq!(v[1]["receivers"], 4);
        assert!(p.same_node(0, 8) && !p.same_node(0, 9));
    }

    #[test]
    fn a_webinar_may_put_its_senders_and_audience_on_different_nodes() {
        let p = Placement::new(&urls(&["a"]), &urls(&["b"]), 3, 200);
        assert_eq!(p.nodes, urls(&["a", "b"]));
        assert!((0..3).all(|i| p.url(i) == "a") && (3..203).all(|i| p.url(i) == "b"));
        let half = Placement::new(&urls(&["a"]), &urls(&["a", "b"]), 3, 200);
        assert_eq!(half.json()[0]["receivers"], 100);
        assert_eq!(half.json()[1]["receivers"], 100);
        assert_eq!(half.json()[1]["senders"], 0);
    }

    #[test]
    fn one_node_is_one_node() {
        let p = Placement::new(&urls(&["a"]), &[], 2, 8);
        assert_eq!(p.nodes.len(), 1);
        assert!(p.same_node(0, 9));
    }
}
