# cmake -P script: install the build into a scratch prefix, configure and build the consumer
# against it with find_package(qinterp), run it, and check its answer (stories260K after BOS:
# token 403, from llama2.c's reference logits).
file(REMOVE_RECURSE "${WORK_DIR}")
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed: ${ARGN}\n${out}\n${err}")
  endif()
  set(LAST_OUT "${out}" PARENT_SCOPE)
endfunction()
run(${CMAKE_COMMAND} --install "${QINTERP_BUILD_DIR}" --prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} -S "${CONSUMER_SRC}" -B "${WORK_DIR}/build" -G "${GENERATOR}"
    "-DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix" "-DTorch_DIR=${TORCH_DIR}" -DCMAKE_BUILD_TYPE=Release)
run(${CMAKE_COMMAND} --build "${WORK_DIR}/build")
run("${WORK_DIR}/build/consumer" "${MODEL}")
if(NOT LAST_OUT MATCHES "argmax 403")
  message(FATAL_ERROR "consumer printed '${LAST_OUT}', expected 'argmax 403'")
endif()
message(STATUS "consumer: ${LAST_OUT}")
