#ifndef FTM_FTM_HPP
#define FTM_FTM_HPP

/// \file
/// Umbrella header: the public API of ftm, without any engine. Include the engine
/// you use as well, e.g. `<ftm/engines/dual_bank.hpp>`.

#include <ftm/durability.hpp>
#include <ftm/engine.hpp>
#include <ftm/error.hpp>
#include <ftm/inspect.hpp>
#include <ftm/inspect_roots.hpp>
#include <ftm/port.hpp>
#include <ftm/reflect.hpp>
#include <ftm/server.hpp>
#include <ftm/session.hpp>
#include <ftm/stable.hpp>
#include <ftm/stable_hash_map.hpp>
#include <ftm/stable_map.hpp>
#include <ftm/stable_string.hpp>
#include <ftm/stable_vector.hpp>
#include <ftm/string_ref.hpp>
#include <ftm/supervisor.hpp>
#include <ftm/transaction.hpp>
#include <ftm/wait.hpp>

#endif  // FTM_FTM_HPP
