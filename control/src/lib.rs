//! twill's node agent and CLI: cluster state from the datastore (`cluster`), node subnet
//! addresses (`ipam`), the calculation of data-plane tables (`calc`), underlay neighbours
//! (`neighbour`), routes to networks outside the cluster (`routes`), the policy compiler
//! kept in step with the cluster (`policy`), the agent that ties them to the forwarder
//! (`agent`), the local API the CNI plugin calls (`server`) and the offline policy tools
//! of `twill policy` (`policy_cli`).

pub mod agent;
pub mod calc;
pub mod cluster;
pub mod ipam;
pub mod neighbour;
pub mod policy;
pub mod policy_cli;
pub mod pool;
pub mod routes;
pub mod server;
