import ArgumentParser
import SwitchyardSupport

@main
struct Switchyard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchyard",
        abstract: "A Mixture-of-Experts inference engine for models larger than fast memory.",
        subcommands: [Generate.self, Chat.self, Serve.self, Logits.self, Tokenize.self, Detokenize.self, Template.self, Info.self, Profile.self, PlanCommand.self, Bench.self, Quantize.self])

    static func main() async {
        // A reader that goes away (`switchyard generate ... | head`) ends the output, not the process.
        signal(SIGPIPE, SIG_IGN)
        await main(nil)
    }
}
