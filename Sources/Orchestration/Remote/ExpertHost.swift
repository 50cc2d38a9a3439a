import Runtime
import SwitchyardSupport

/// Routed experts held in another host's memory and run there: tier 1's view of an expert host
/// (`switchyard expert-worker`). Tier 1 sends each host only the rows routed to its experts and
/// takes their outputs back into the same rows; the model mixes them in ascending expert order, so
/// results do not depend on where an expert ran. The Orchestration module places experts on hosts
/// and schedules them; the RemoteExperts module talks to them.
public protocol ExpertHost: AnyObject, Sendable {
    /// Its address, for messages.
    var name: String { get }
    /// Bytes its experts may take.
    var memory: Int { get }
    /// The experts it holds now, and whether that set is its own (`--experts`) rather than assigned.
    var held: Set<ExpertKey> { get }
    var fixed: Bool { get }
    /// The link as measured when it came up: round trip of a small request, bytes per second.
    var roundTrip: Double { get }
    var bandwidth: Double { get }
    /// Whether it has been lost (its connection broke or a reply missed the deadline).
    var isLost: Bool { get }
    /// Makes it hold exactly `experts` (a host with its own set accepts only that set).
    func assign(_ experts: [ExpertKey]) throws(WorkFailure)
    /// Sends `tasks`' rows of `input` ([*, hidden]) to its experts of `layer`; the completion is
    /// done once their outputs are in the same rows of `output`, or failed when the host is lost.
    /// The inputs are copied before it returns; `output` must stay valid until it is done.
    func run(layer: Int, tasks: [ExpertTask], input: UnsafePointer<Float>, output: UnsafeMutablePointer<Float>, hidden: Int) -> Completion
}
