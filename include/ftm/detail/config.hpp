#ifndef FTM_DETAIL_CONFIG_HPP
#define FTM_DETAIL_CONFIG_HPP

/// \file
/// Build switches. `FTM_CHECKED` turns on the run-time checks of the open/close
/// discipline (use after close, use after the transaction ended); it defaults to on
/// unless `NDEBUG` is defined. Define it to 0 or 1 to choose explicitly.

#ifndef FTM_CHECKED
#ifdef NDEBUG
#define FTM_CHECKED 0
#else
#define FTM_CHECKED 1
#endif
#endif

/// The inline namespace that holds everything of ftm whose code `FTM_CHECKED` may
/// change: `ftm::checked_abi` or `ftm::unchecked_abi`. A program that builds one
/// translation unit checked and another unchecked then links two sets of names, not
/// two bodies under one name (an ODR violation the linker would resolve at random).
/// Users never name it. Every header opens its namespaces through it, in one line:
///
///     namespace ftm::FTM_ABI_NAMESPACE {          // for namespace ftm {
///     namespace ftm::FTM_ABI_NAMESPACE::detail {  // for namespace ftm::detail {
///
/// The error vocabulary (`<ftm/error.hpp>`) alone stays in `ftm`: it does not depend
/// on the switch, and one `catch` must catch what both halves throw.
/// `tests/odr/` fails if a header emits a name outside it.
#if FTM_CHECKED
#define FTM_ABI_NAMESPACE inline checked_abi
#else
#define FTM_ABI_NAMESPACE inline unchecked_abi
#endif

#endif  // FTM_DETAIL_CONFIG_HPP
