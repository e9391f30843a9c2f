// Logarithmic spirals: arms where angle + twist * log(r) is constant; a galaxy / shell pattern.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = (fragCoord - iMouse.xy * 0.5 - 0.25 * iResolution.xy) / iResolution.y;
    float arms = floor(1.0 + 7.0 * iParams[0].x);
    float twist = (1.0 + 6.0 * iParams[0].y) * (iParams[0].z < 0.5 ? -1.0 : 1.0);
    float a = atan(uv.y, uv.x);
    float r = length(uv) + 1e-4;
    float v = sin(arms * a + twist * log(r) * 3.0 + iTime);
    float sharp = smoothstep(-0.2, 0.2, v);
    vec3 col = mix(kd_palette(r), kd_palette(0.5 + r), sharp) * (0.6 + 0.4 * smoothstep(0.0, 0.6, r));
    fragColor = vec4(col, 1.0);
}
