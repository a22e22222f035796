//! The cluster's members as `dog` sees them before running a command that needs them
//! (`update_node_list` of the original): GET_NODE_LIST, nodes sorted by address then port
//! (the order of the original's rb-tree, hence of every listing and of the vnode ring), and
//! the epoch the answering sheep is at.
//! Owns: fetching and ordering the node list. Never: printing it.

use crate::conn::Sheep;
use crate::error::{Fail, Res, EXIT_FAILURE, EXIT_SYSFAIL};
use proto::node::SD_NODE_SIZE;
use proto::{opcode, Header, SdNode, SdResult};

pub struct NodeList {
    /// Sorted by (address, port).
    pub nodes: Vec<SdNode>,
    /// The epoch of the sheep that answered (its response header's epoch).
    pub epoch: u32,
}

impl NodeList {
    pub async fn fetch(s: &Sheep) -> Res<NodeList> {
        let give_up = "Failed to get node list";
        let hdr = Header::request(opcode::GET_NODE_LIST);
        let r = s
            .read(hdr, (proto::SD_MAX_NODES * SD_NODE_SIZE) as u32)
            .await
            .map_err(|f| f.then(give_up))?;
        if r.result() != SdResult::SUCCESS {
            return Err(Fail::new(
                EXIT_SYSFAIL,
                format!(
                    "Failed to update node list: {}\n{give_up}",
                    r.result().text()
                ),
            ));
        }
        let nodes = SdNode::decode_list(&r.data);
        if nodes.is_empty() {
            return Err(Fail::new(EXIT_FAILURE, "There are no active sheep daemons"));
        }
        Ok(NodeList::new(nodes, r.header.epoch()))
    }

    pub fn new(mut nodes: Vec<SdNode>, epoch: u32) -> NodeList {
        nodes.sort_by_key(|a| a.nid);
        NodeList { nodes, epoch }
    }

    /// Distinct zones among all members.
    pub fn zones(&self) -> usize {
        let mut z: Vec<u32> = self.nodes.iter().map(|n| n.zone).collect();
        z.sort_unstable();
        z.dedup();
        z.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::NodeId;

    #[test]
    fn sorted_like_the_original() {
        let n = |ip: [u8; 4], port: u16, zone: u32| SdNode {
            nid: NodeId::new(std::net::Ipv4Addr::from(ip).into(), port),
            nr_vnodes: 128,
            zone,
            space: 0,
        };
        let l = NodeList::new(
            vec![
                n([127, 0, 0, 1], 7002, 1),
                n([10, 0, 0, 9], 7000, 1),
                n([127, 0, 0, 1], 7000, 2),
            ],
            3,
        );
        let order: Vec<String> = l.nodes.iter().map(|x| x.nid.to_string()).collect();
        assert_eq!(
            order,
            vec!["10.0.0.9:7000", "127.0.0.1:7000", "127.0.0.1:7002"]
        );
        assert_eq!(l.zones(), 2);
    }
}
