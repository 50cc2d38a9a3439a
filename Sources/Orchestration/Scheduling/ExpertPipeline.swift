/// How many groups a layer's moved experts are pipelined in (`--expert-pipeline`).
public enum PipelineSetting: Sendable, Equatable, CustomStringConvertible {
    /// N from the cost model: N* = sqrt(C/k), off where it does not pay.
    case auto
    /// One group: every movement of the layer finishes before any moved expert computes.
    case off
    /// Exactly this many groups (at most the experts moved): for tests and benchmarks.
    case groups(Int)

    /// `auto`, `off`, or a group count of 1 to 4096.
    public init?(_ text: String) {
        switch text {
        case "auto": self = .auto
        case "off": self = .off
        default:
            guard let n = Int(text), (1...4096).contains(n) else { return nil }
            self = .groups(n)
        }
    }

    public var description: String {
        switch self {
        case .auto: return "auto"
        case .off: return "off"
        case .groups(let n): return String(n)
        }
    }
}

/// EPS-MoE's expert pipeline, for one MoE layer of one step: the experts that must move before they
/// compute (a disk read into a RAM slot, a copy into the accelerator, tokens sent to an expert host)
/// are split into N groups in order; group g's experts compute once group g's movement is done,
/// while group g+1's moves. With movement time M and compute time C of the moved experts, and k the
/// cost of one more group (a wait and a wake-up, or a message), the layer takes about
/// max(M, C) + min(M, C) / N + (N - 1) k, against M + C unpipelined, which is least at
/// N* = sqrt(min(M, C) / k) (EPS-MoE, section 4). N is bounded by the experts moved and by the RAM
/// cache: a group must fit its slots, two groups at once when they overlap. Unpipelined, groups run
/// one after another (all of a group's movement, then its compute), as few as the slots allow. The
/// pipeline is off where the best N gains nothing over that, roughly where min(M, C) < 2k.
public struct ExpertPipeline: Sendable, Equatable {
    /// Groups the moved experts are split into.
    public var groups: Int
    /// Whether a group's movement overlaps the previous group's compute (false: off).
    public var overlapped: Bool
    /// The unbounded optimum sqrt(min(M, C) / k) (0 with nothing to move).
    public var optimum: Double
    /// Movement and compute time of the moved experts, and the per-group overhead, as predicted.
    public var movement: Double, compute: Double, overhead: Double
    /// The layer's predicted time as chosen, and unpipelined.
    public var predicted: Double, unpipelined: Double

    /// The layer's time with `n` overlapped groups: the resources' makespan (`floor`, which assumes
    /// perfect overlap) can be reached only when the first group's movement and the last group's
    /// compute are short.
    public static func layerSeconds(groups n: Int, movement m: Double, compute c: Double, overhead k: Double, floor: Double) -> Double {
        let n = Double(max(1, n))
        return max(floor, max(m, c) + min(m, c) / n) + (n - 1) * k
    }

    /// - Parameters:
    ///   - movement: seconds until the last moved expert's data is in place (the busiest link).
    ///   - compute: seconds of the moved experts' kernels (on whichever devices run them).
    ///   - floor: the layer's makespan with every resource overlapped perfectly (the scheduler's).
    ///   - moved: experts that move this layer; `reads` of them are read into RAM cache slots, of
    ///     which there are `slots`.
    public static func choose(movement: Double, compute: Double, floor: Double, overhead: Double, moved: Int, reads: Int, slots: Int,
                              setting: PipelineSetting) -> ExpertPipeline {
        let k = max(overhead, 1e-7)
        guard moved > 0 else {
            return ExpertPipeline(groups: 1, overlapped: false, optimum: 0, movement: movement, compute: compute, overhead: k,
                                  predicted: floor, unpipelined: floor)
        }
        func groups(ofAtMost size: Int) -> Int { (moved + max(1, size) - 1) / max(1, size) }
        let capacity = reads > 0 ? max(1, slots) : moved
        let sequential = groups(ofAtMost: capacity)
        let fewestOverlapped = min(moved, groups(ofAtMost: capacity / 2))
        let unpipelined = max(floor, movement + compute) + Double(sequential - 1) * k
        let optimum = (min(movement, compute) / k).squareRoot()
        func time(_ n: Int) -> Double { layerSeconds(groups: n, movement: movement, compute: compute, overhead: k, floor: floor) }
        func off() -> ExpertPipeline {
            ExpertPipeline(groups: sequential, overlapped: false, optimum: optimum, movement: movement, compute: compute, overhead: k,
                           predicted: unpipelined, unpipelined: unpipelined)
        }
        func on(_ n: Int) -> ExpertPipeline {
            let n = max(fewestOverlapped, min(moved, n))
            return ExpertPipeline(groups: n, overlapped: true, optimum: optimum, movement: movement, compute: compute, overhead: k,
                                  predicted: time(n), unpipelined: unpipelined)
        }
        switch setting {
        case .off, .groups(1): return off()
        case .groups(let n): return on(n)
        case .auto:
            // The integer neighbours of N*, within what the slots and the experts allow; the fastest
            // wins, and the pipeline only where it beats running unpipelined.
            let below = max(2, Int(optimum.rounded(.down))), above = max(2, Int(optimum.rounded(.up)))
            let best = [on(below), on(above)].min { ($0.predicted, $0.groups) < ($1.predicted, $1.groups) }!
            return moved > 1 && best.predicted < unpipelined ? best : off()
        }
    }

    /// The pipeline of one layer as the scheduler decided it (`decision` over experts of `tokens`
    /// tokens each): the experts that move (in order; none under the naive policy, which reads
    /// each when it computes), their movement (the busiest link; a host's includes its round
    /// trip) and their compute (on the busiest device; hosts' spread over `hosts`). Execution and
    /// `plan` both call it.
    public static func forLayer(_ decision: LayerScheduler.Decision, tokens: [Int], costs: CostModel, hosts: Int, slots: Int,
                                setting: PipelineSetting, naive: Bool = false) -> (pipeline: ExpertPipeline, moved: [Int]) {
        let moving: Set<ExpertAction> = [.readThenCPU, .readThenCopy, .copyToAccelerator, .remote]
        let moved = naive ? [] : decision.actions.indices.filter { moving.contains(decision.actions[$0]) }
        var cpu = 0.0, accelerator = 0.0, remote = 0.0, transfer = 0.0, reads = 0
        for i in moved {
            let n = tokens[i]
            switch decision.actions[i] {
            case .remote:
                remote += costs.cpu(tokens: n) * costs.remoteComputeScale
                transfer += costs.remoteTransfer(tokens: n)
            case .copyToAccelerator:
                accelerator += costs.accelerator(tokens: n)
            case .readThenCopy:
                accelerator += costs.accelerator(tokens: n)
                reads += 1
            default:
                cpu += costs.cpu(tokens: n)
                reads += 1
            }
        }
        let spread = Double(max(1, hosts))
        let pipeline = choose(
            movement: max(decision.disk, decision.link, transfer > 0 ? costs.remoteRoundTrip + transfer / spread : 0),
            compute: max(cpu, accelerator, remote / spread), floor: decision.makespan, overhead: costs.groupOverheadSeconds,
            moved: moved.count, reads: reads, slots: slots, setting: setting)
        return (pipeline, moved)
    }

    /// The group of the `index`-th moved expert (in movement order) of `moved`: consecutive runs of
    /// nearly equal size.
    public func group(ofMoved index: Int, moved: Int) -> Int {
        moved > 0 ? index * groups / moved : 0
    }
}
