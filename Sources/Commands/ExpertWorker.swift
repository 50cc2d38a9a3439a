import ArgumentParser
import AttentionWire
import ExpertWire
import ExpertWorker
import Kernels
import Models
import RemoteAttention
import RemoteExperts
import SwitchyardJSON
import SwitchyardSupport

/// `switchyard expert-worker`: routed experts in another host's memory (EPS-MoE's expert hosts).
struct ExpertWorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "expert-worker",
        abstract: "Hold some of a model's routed experts in memory and run them for a tier-1 process (`--expert-workers`).",
        discussion: """
            Reads the experts from its own copy of the model files. Without --experts it holds what tier 1 assigns it. Prints \
            one line, SWITCHYARD_LISTENING {"address":"HOST:PORT","pid":N,"epoch":"...","memory":BYTES,"experts":N}, once it \
            listens. Exits when its parent process ends, when its standard input (a pipe or socket) closes, or on SIGTERM or \
            SIGINT (status 0); a fatal error exits with status 1. It never detaches from its parent.
            """)

    @Option(help: "Address to listen on, HOST:PORT (port 0: a free one).")
    var listen = "127.0.0.1:0"

    @Option(help: "The model folder (the same model as tier 1's; default: the bundled demo model).")
    var model: String?

    @Option(help: ArgumentHelp(
        "The experts to hold, e.g. 0:0-3,1:0-3 or *:0-3 (every MoE layer); default: what tier 1 assigns.",
        discussion: "Comma-separated LAYER:EXPERT or LAYER:FIRST-LAST, layers and experts counted from 0."))
    var experts: String?

    @Option(help: "Memory its experts may take, e.g. 8GiB (default: all of the model's routed experts).")
    var memory: String?

    @Option(name: [.short, .long], help: "Kernel threads (default: the cores this process may use).")
    var threads: Int?

    func validate() throws {
        try checkRange(threads, "--threads", 1...1024)
    }

    func run() throws {
        try reportingErrors {
            let address = try listenAddress(listen)
            let pool = threads.map { ThreadPool(threads: $0) } ?? .shared
            let loaded = try LoadedModel.load(try ModelFormats.open(try modelDirectory(model)), pool: pool, regroup: false)
            let total = loaded.weights.layers.reduce(0) { sum, layer in
                guard case .mixtureOfExperts(let m) = layer.feedForward else { return sum }
                return sum + m.experts.reduce(0) { $0 + $1.matrices.reduce(0) { $0 + (($1.byteCount + 63) & ~63) } }
            }
            guard total > 0 else { throw InputError("\(loaded.source.path): this \(loaded.config.modelType) has no routed experts to hold") }
            let budget = try memory.map(parseByteSize) ?? total
            guard budget > 0 else { throw InputError("--memory must be more than 0 bytes") }
            var fixed: [WireExpert]?
            if let experts {
                do throws(WireError) { fixed = try ExpertService.parseExperts(experts, config: loaded.config) } catch {
                    throw InputError(error.description)
                }
            }
            exitWithParent()
            let service: ExpertService
            do throws(WireError) { service = try ExpertService(model: loaded, memory: budget, experts: fixed, pool: pool) } catch {
                throw InputError("--experts: \(error.description)")
            }
            let server = ExpertServer(service: service)
            let bound: (host: String, port: Int)
            do { bound = try server.start(host: address.host, port: address.port) } catch {
                throw InputError("cannot listen on \(listen): \(error)")
            }
            var line = JSONObject()
            line["address"] = .string(WorkerAddress(host: bound.host, port: bound.port).description)
            line["pid"] = .int(Int(getpid()))
            line["epoch"] = .string(service.status.epochHex)
            line["memory"] = .int(budget)
            line["experts"] = .int(service.status.experts.count)
            writeOut("SWITCHYARD_LISTENING " + JSONValue.object(line).serialized() + "\n")
            try server.wait()
        }
    }
}

/// `switchyard expert-status`: the health check of an expert host.
struct ExpertStatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "expert-status",
        abstract: "Ask an expert host for its status (a health check): prints JSON, exits 1 when it does not answer.")

    @Argument(help: "The host's HOST:PORT.")
    var address: String

    @Option(help: "Seconds to wait for the answer.")
    var timeout: Double = 5

    func validate() throws {
        guard timeout.isFinite, timeout > 0, timeout <= 3600 else { throw ValidationError("--timeout must be between 0 and 3600 seconds") }
    }

    func run() throws {
        try reportingErrors {
            do throws(LinkFailure) {
                let deadline = Duration.milliseconds(Int64(timeout * 1000))
                let host = try RemoteExpertHost(try WorkerAddress(parsing: address), shape: nil, deadline: deadline, connectTimeout: deadline)
                let s = host.status
                host.close()
                var o = JSONObject()
                o["address"] = .string(address)
                o["epoch"] = .string(s.epochHex)
                o["memory"] = .int(s.memory)
                o["in_use"] = .int(s.inUse)
                o["experts"] = .int(s.experts.count)
                o["fixed"] = .bool(s.fixed)
                o["connections"] = .int(s.connections)
                writeOut(JSONValue.object(o).serialized() + "\n")
            } catch {
                throw InputError(error.description)
            }
        }
    }
}
