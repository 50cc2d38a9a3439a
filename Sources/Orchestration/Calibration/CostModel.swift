import Kernels
import Models
import SwitchyardJSON
import SwitchyardSupport

/// What the scheduler predicts with, measured on this machine for this model's expert shape (never
/// constants): one expert's time on each device for a range of token counts, and the rate of each
/// link (host → accelerator copies, disk reads).
public struct CostModel: Sendable, Equatable {
    /// Identifies the machine, thread counts and expert shape the table was measured for.
    public var key: String
    public var tokenCounts: [Int]
    /// Seconds for one expert (gate, up, down) over tokenCounts[i] tokens.
    public var cpuSeconds: [Double]
    public var acceleratorSeconds: [Double]
    public var copyBytesPerSecond: Double
    public var diskBytesPerSecond: Double
    /// Bytes of one expert's three matrices.
    public var expertBytes: Int
    /// What one more pipeline group costs (`ExpertPipeline`'s k): handing work to another thread
    /// and waking on its completion.
    public var groupOverheadSeconds: Double
    /// Observations learned since the table was measured or loaded (`learn`).
    public var observations = 0
    /// Expert hosts' links, set when they connect (not cached: links change between runs): the
    /// round trip, bytes per second, one token's row (float32), and how a host's kernels compare
    /// with this CPU's (learned as they run).
    public var remoteRoundTrip = 0.0, remoteBytesPerSecond = 0.0, tokenRowBytes = 0, remoteComputeScale = 1.0

    public static let measuredTokenCounts = [1, 2, 4, 8, 16, 32, 64, 128]

    /// Linear between measured counts, proportional beyond the largest.
    static func interpolate(_ counts: [Int], _ seconds: [Double], _ n: Int) -> Double {
        guard n > 0, !seconds.isEmpty else { return 0 }
        if n <= counts[0] { return seconds[0] }
        for i in 1..<counts.count where n <= counts[i] {
            let f = Double(n - counts[i - 1]) / Double(counts[i] - counts[i - 1])
            return seconds[i - 1] + f * (seconds[i] - seconds[i - 1])
        }
        return seconds[seconds.count - 1] * Double(n) / Double(counts[counts.count - 1])
    }

    public func cpu(tokens: Int) -> Double { CostModel.interpolate(tokenCounts, cpuSeconds, tokens) }
    public func accelerator(tokens: Int) -> Double { CostModel.interpolate(tokenCounts, acceleratorSeconds, tokens) }
    public var copySeconds: Double { copyBytesPerSecond > 0 ? Double(expertBytes) / copyBytesPerSecond : .infinity }
    public var diskSeconds: Double { diskBytesPerSecond > 0 ? Double(expertBytes) / diskBytesPerSecond : .infinity }
    /// Sending `tokens` rows to an expert host and their outputs back.
    public func remoteTransfer(tokens: Int) -> Double {
        remoteBytesPerSecond > 0 ? Double(2 * tokens * tokenRowBytes) / remoteBytesPerSecond : 0
    }

    public var json: JSONValue {
        var o = JSONObject()
        o["key"] = .string(key)
        o["token_counts"] = .array(tokenCounts.map { .int($0) })
        o["cpu_seconds"] = .array(cpuSeconds.map { .double($0) })
        o["accelerator_seconds"] = .array(acceleratorSeconds.map { .double($0) })
        o["copy_bytes_per_second"] = .double(copyBytesPerSecond)
        o["disk_bytes_per_second"] = .double(diskBytesPerSecond)
        o["expert_bytes"] = .int(expertBytes)
        o["group_overhead_seconds"] = .double(groupOverheadSeconds)
        o["observations"] = .int(observations)
        if remoteBytesPerSecond > 0 {
            o["remote_round_trip_seconds"] = .double(remoteRoundTrip)
            o["remote_bytes_per_second"] = .double(remoteBytesPerSecond)
            o["remote_compute_scale"] = .double(remoteComputeScale)
        }
        return .object(o)
    }

    public init(key: String, tokenCounts: [Int], cpuSeconds: [Double], acceleratorSeconds: [Double],
                copyBytesPerSecond: Double, diskBytesPerSecond: Double, expertBytes: Int, groupOverheadSeconds: Double = 20e-6) {
        self.key = key
        self.tokenCounts = tokenCounts
        self.cpuSeconds = cpuSeconds
        self.acceleratorSeconds = acceleratorSeconds
        self.copyBytesPerSecond = copyBytesPerSecond
        self.diskBytesPerSecond = diskBytesPerSecond
        self.expertBytes = expertBytes
        self.groupOverheadSeconds = groupOverheadSeconds
    }

    /// A cached table, or nil when the JSON is not one (a cache written by another version is
    /// measured again rather than trusted).
    init?(json: JSONValue) {
        func numbers(_ k: String) -> [Double]? { json[k]?.arrayValue?.compactMap(\.doubleValue) }
        guard let key = json["key"]?.stringValue,
              let counts = json["token_counts"]?.arrayValue?.compactMap(\.intValue), !counts.isEmpty,
              let cpu = numbers("cpu_seconds"), cpu.count == counts.count,
              let accelerator = numbers("accelerator_seconds"), accelerator.isEmpty || accelerator.count == counts.count,
              let copy = json["copy_bytes_per_second"]?.doubleValue,
              let disk = json["disk_bytes_per_second"]?.doubleValue,
              let bytes = json["expert_bytes"]?.intValue,
              let overhead = json["group_overhead_seconds"]?.doubleValue
        else { return nil }
        self.init(key: key, tokenCounts: counts, cpuSeconds: cpu, acceleratorSeconds: accelerator,
                  copyBytesPerSecond: copy, diskBytesPerSecond: disk, expertBytes: bytes, groupOverheadSeconds: overhead)
        observations = json["observations"]?.intValue ?? 0
    }

    /// Where tables are cached: $SWITCHYARD_CACHE_DIR, else $XDG_CACHE_HOME/switchyard, else
    /// ~/.cache/switchyard.
    public static var defaultDirectory: String {
        if let d = getenv("SWITCHYARD_CACHE_DIR") { return String(cString: d) }
        if let d = getenv("XDG_CACHE_HOME") { return String(cString: d) + "/switchyard" }
        let home = getenv("HOME").map { String(cString: $0) } ?? "/tmp"
        return home + "/.cache/switchyard"
    }

    /// The machine part of cache keys: the CPU's model name and the cores this process may use.
    public static var machineDescription: String {
        var name = "unknown cpu"
        if let bytes = try? readFileBytes("/proc/cpuinfo") {
            let text = String(decoding: bytes, as: UTF8.self)
            if let line = text.split(separator: "\n").first(where: { $0.hasPrefix("model name") }),
               let colon = line.firstIndex(of: ":") {
                name = line[line.index(after: colon)...].trimmed()
            }
        }
        return "\(name), \(ThreadPool.availableCores) cores"
    }

    static func fileName(for key: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in key.utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3 }
        return "costs-" + String(hash, radix: 16) + ".json"
    }

    static func load(key: String, directory: String) -> CostModel? {
        let path = directory + "/" + fileName(for: key)
        guard let bytes = try? readFileBytes(path), let json = try? JSONValue.parse(bytes),
              let table = CostModel(json: json), table.key == key else { return nil }
        return table
    }

    /// Writes the table; a cache that cannot be written costs a re-measurement next time, nothing more.
    func save(directory: String) {
        var path = directory.hasPrefix("/") ? "" : "."
        for part in directory.split(separator: "/") {
            path += "/" + part
            mkdir(path, 0o755)
        }
        let file = directory + "/" + CostModel.fileName(for: key)
        let temporary = file + ".\(getpid()).tmp"
        guard let handle = fopen(temporary, "w") else { return }
        fputs(json.serialized() + "\n", handle)
        fclose(handle)
        rename(temporary, file)
    }
}
